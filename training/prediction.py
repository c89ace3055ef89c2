"""What `scripts/predict.py` reads and prints: image files, folders of them and http(s) URLs, each decoded as the
endpoint and the demo decode an image (`endpoint.handler.load_image`), classified a few at a time, and the top-k table.

A user's own files are decoded at any size (`load_image(..., max_decoded_pixels=None)`): a PNG too large for the
endpoint is decoded, then shrunk. Bytes fetched from a URL are not the user's own, and keep the endpoint's limit.
"""

import http.client
import itertools
import time
import urllib.error
import urllib.request
from pathlib import Path

from PIL import Image

from vtlm.endpoint.handler import load_image

# A URL's answer is read up to this many bytes; a larger one is refused.
MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024
# Seconds a download may take in all (connecting, waiting, reading), checked after every read.
DOWNLOAD_TIMEOUT = 30
USER_AGENT = "vtlm-predict (scripts/predict.py; Python urllib)"
# Images decoded and held at once: a folder of thousands of photos is classified in bounded memory.
IMAGES_PER_CALL = 64


def is_url(name: str) -> bool:
    return name.lower().startswith(("http://", "https://"))


def image_suffixes() -> set[str]:
    """The file name endings of every format PIL can open (`.png`, `.jpg`, `.webp`, ...), lowercase."""
    return {suffix for suffix, format in Image.registered_extensions().items() if format in Image.OPEN}


def expand_folders(names) -> list[str]:
    """`names` with each folder replaced by the image files directly inside it, sorted by name: files whose names end
    as a format PIL opens, hidden ones (`.name`) left out as `datasets`' imagefolder leaves them out. A folder with
    none is kept, for `read_image` to refuse in its place."""
    suffixes = image_suffixes()
    expanded = []
    for name in names:
        folder = Path(name)
        files = []
        if not is_url(name) and folder.is_dir():
            files = sorted(
                path.name
                for path in folder.iterdir()
                if path.suffix.lower() in suffixes and not path.name.startswith(".") and path.is_file()
            )
        expanded.extend([str(folder / file) for file in files] or [name])
    return expanded


def read_image(name: str) -> Image.Image:
    """One input decoded: a URL fetched (`download`), a file read. Raises `ValueError` saying why it cannot be."""
    if is_url(name):
        return load_image(download(name))
    path = Path(name)
    if path.is_dir():  # `expand_folders` keeps only the folders that hold no image file
        raise ValueError("is a directory with no image files directly inside it")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if "://" in name:
            raise ValueError("no such file, and only http:// and https:// URLs are fetched") from None
        raise ValueError("no such file") from None
    except OSError as error:
        raise ValueError(f"cannot be read ({error.strerror or error})") from error
    return load_image(data, max_decoded_pixels=None)


def download(url: str) -> bytes:
    """The body of `url`; `ValueError` for an answer other than success, one larger than `MAX_DOWNLOAD_BYTES`, or one
    not complete within about `DOWNLOAD_TIMEOUT` seconds (each read waits at most that long, and the whole is checked
    after each)."""
    max_bytes, timeout = MAX_DOWNLOAD_BYTES, DOWNLOAD_TIMEOUT
    deadline = time.monotonic() + timeout
    too_large = f"the answer is larger than the {max_bytes:,} bytes downloaded at most"
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length", "")
            if length.isdigit() and int(length) > max_bytes:
                raise ValueError(too_large)
            chunks, size = [], 0
            while chunk := response.read1(1024 * 1024):  # whatever has arrived: a slow server is checked often
                size += len(chunk)
                if size > max_bytes:
                    raise ValueError(too_large)
                if time.monotonic() > deadline:
                    raise TimeoutError
                chunks.append(chunk)
    except urllib.error.HTTPError as error:
        raise ValueError(f"the server answered HTTP {error.code} {error.reason}") from None
    except TimeoutError:
        raise ValueError(f"no complete answer within {timeout:g} s") from None
    except urllib.error.URLError as error:  # no such host, refused, timed out while connecting
        raise ValueError(f"could not be fetched ({error.reason})") from None
    except (OSError, http.client.HTTPException) as error:
        raise ValueError(f"could not be fetched ({error or type(error).__name__})") from None
    return b"".join(chunks)


def classify_inputs(names, load_classifier, top_k: int) -> tuple[list[str], list, list[str]]:
    """Classify every input that `names` stand for (`expand_folders`), `IMAGES_PER_CALL` at a time.

    Returns the names classified, their predictions (the pipeline's top-k per image, in that order) and a line
    `<name>: <why>` for each input that could not be, in input order. `load_classifier()` makes the pipeline, and is
    called once, before the first image that decodes: not at all when none does.
    """
    classifier, answered, predictions, errors = None, [], [], []
    pending = iter(expand_folders(names))
    while chunk := list(itertools.islice(pending, IMAGES_PER_CALL)):
        images = []
        for name in chunk:
            try:
                images.append(read_image(name))
            except ValueError as error:
                errors.append(f"{name}: {error}")
            else:
                answered.append(name)
        if images:
            classifier = classifier or load_classifier()
            predictions.extend(classifier(images, top_k=top_k))
    return answered, predictions, errors


def format_table(names, predictions) -> str:
    """One row per (image, rank): the image's name on its first row only."""
    rows = [("image", "rank", "label", "score")]
    for name, labels in zip(names, predictions, strict=True):
        for rank, prediction in enumerate(labels, start=1):
            rows.append((name if rank == 1 else "", str(rank), prediction["label"], f"{prediction['score']:.4f}"))
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    return "\n".join(
        f"{image:<{widths[0]}}  {rank:>{widths[1]}}  {label:<{widths[2]}}  {score:>{widths[3]}}"
        for image, rank, label, score in rows
    )
