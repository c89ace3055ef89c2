"""Whether the Hugging Face Hub can be reached from here: one TCP connection, so that a machine without a route fails
within seconds instead of waiting out the retries of `load_dataset` or `from_pretrained` (~25 s)."""

import socket
import urllib.parse
import urllib.request

from huggingface_hub import constants

# Long enough for a slow but working connection, short enough that a machine with no route fails within seconds.
HUB_CHECK_TIMEOUT_S = 3.0


def hub_unreachable_reason():
    """Why the Hub (or the proxy to it) cannot be reached, from one TCP connection; None when it can."""
    endpoint = urllib.parse.urlsplit(constants.ENDPOINT)
    host, port = endpoint.hostname, endpoint.port or (443 if endpoint.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(endpoint.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        proxy = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxy.hostname, proxy.port or 80
    try:
        socket.create_connection((host, port), timeout=HUB_CHECK_TIMEOUT_S).close()
    except OSError as error:
        return f"the Hub at {constants.ENDPOINT} cannot be reached ({host}:{port}: {error})"
    return None
