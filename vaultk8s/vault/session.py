"""The requests.Session every Vault call goes through, with a short path for the plain calls.

requests costs about as much CPU per call as the rest of a sign: on every request Session.request
merges cookies, auth, hooks, environment and headers, prepares the request, and HTTPAdapter
checks the CA bundle on disk and builds the response (bench/README.md, eighth pass: 0.9-1.0 ms
of client CPU per sign through it, 0.5 ms through urllib3 alone). So a plain call, a JSON body or
none, with the session's own TLS settings, no proxy for its URL (NO_PROXY alone is none), and no
client certificate, cookie or auth, goes to urllib3 directly, with the same Retry, timeout, pool
size, CA and header checks, and comes back as a requests.Response raising requests' exceptions:
hvac and vault/failover.py see no difference.
Anything else takes requests' full path.
"""

from __future__ import annotations

import json as jsonlib
import os
import threading
from urllib.parse import urlencode

import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.cookies import extract_cookies_to_jar
from requests.hooks import dispatch_hook
from requests.structures import CaseInsensitiveDict
from requests.utils import check_header_validity, get_encoding_from_headers, select_proxy
from urllib3 import exceptions as u3
from urllib3.util.retry import Retry


class VaultSession(requests.Session):
    def __init__(self, retry: Retry, pool_size: int) -> None:
        super().__init__()
        self.trust_env = False  # proxies and CA bundle are read once, in vault_session
        adapter = HTTPAdapter(max_retries=retry, pool_connections=4, pool_maxsize=pool_size)
        self.mount("https://", adapter)
        self.mount("http://", adapter)
        self._retry, self._pool_size = retry, pool_size
        self._pools: tuple[object, urllib3.PoolManager] | None = None  # (the verify it was made for, pools)
        self._pools_lock = threading.Lock()

    def request(self, method, url, params=None, data=None, headers=None, cookies=None, files=None, auth=None,
                timeout=None, allow_redirects=True, proxies=None, hooks=None, stream=None, verify=None, cert=None,
                json=None):
        if (data or cookies or files or auth or hooks or stream or cert or self.cert or self.auth or self.cookies
                or select_proxy(url, {**self.proxies, **(proxies or {})}) or self.trust_env
                or (verify is not None and verify != self.verify) or not allow_redirects):
            return super().request(method, url, params=params, data=data, headers=headers, cookies=cookies,
                                   files=files, auth=auth, timeout=timeout, allow_redirects=allow_redirects,
                                   proxies=proxies, hooks=hooks, stream=stream, verify=verify, cert=cert, json=json)
        return self._direct(method.upper(), url, params, headers, timeout, json)

    def _direct(self, method: str, url: str, params, headers, timeout, json) -> requests.Response:
        for header in (headers or {}).items():
            check_header_validity(header)  # as requests does: a token with a newline or space never leaves
        sent = CaseInsensitiveDict(self.headers)
        sent.update(headers or {})
        body = None
        if json is not None:
            body = jsonlib.dumps(json, allow_nan=False).encode()
            sent.setdefault("Content-Type", "application/json")
        query = urlencode([(k, v) for k, v in _pairs(params) if v is not None], doseq=True)  # requests drops None
        if query:
            url += ("&" if "?" in url else "?") + query
        try:
            raw = self._pool_manager().urlopen(method, url, body=body, headers=dict(sent), retries=self._retry,
                                               timeout=timeout, preload_content=False, decode_content=False)
        except (u3.HTTPError, OSError) as err:
            raise _as_requests_error(err) from err
        response = requests.Response()
        response.status_code, response.reason, response.raw = raw.status, raw.reason, raw
        response.headers = CaseInsensitiveDict(raw.headers)
        response.encoding = get_encoding_from_headers(response.headers)
        response.url = raw.url if "://" in (raw.url or "") else url  # urllib3 may give the path alone
        response = dispatch_hook("response", self.hooks, response)
        if "set-cookie" in response.headers:  # a load balancer's stickiness: kept, and sent from now on
            extract_cookies_to_jar(self.cookies, requests.Request(method, response.url).prepare(), raw)
        response.content  # read to the end: only then does the connection go back to the pool
        return response

    def _pool_manager(self) -> urllib3.PoolManager:
        pools = self._pools  # one tuple, swapped whole: read without the lock on every call
        if pools is not None and pools[0] == self.verify:
            return pools[1]
        with self._pools_lock:
            if self._pools is None or self._pools[0] != self.verify:
                self._pools = (self.verify, urllib3.PoolManager(
                    num_pools=4, maxsize=self._pool_size, retries=self._retry, **_tls(self.verify)))
            return self._pools[1]


def _pairs(params) -> list:
    """(key, value) pairs of requests' params: a dict, pairs, or nothing."""
    if not params:
        return []
    return list(params.items()) if hasattr(params, "items") else list(params)


def _tls(verify: bool | str) -> dict:
    """urllib3's TLS settings for requests' verify: True (requests' CA bundle), a file, a directory, or off."""
    if verify is False:
        return {"cert_reqs": "CERT_NONE"}
    where = requests.certs.where() if verify is True else verify
    return {"cert_reqs": "CERT_REQUIRED", **({"ca_cert_dir": where} if os.path.isdir(where) else {"ca_certs": where})}


_BY_REASON = ((u3.ResponseError, requests.exceptions.RetryError), (u3.SSLError, requests.exceptions.SSLError))
_BY_ERROR = ((u3.SSLError, requests.exceptions.SSLError), (u3.ReadTimeoutError, requests.exceptions.ReadTimeout),
             (u3.InvalidHeader, requests.exceptions.InvalidHeader))


def _as_requests_error(err: BaseException) -> requests.RequestException:
    """The exception requests' HTTPAdapter.send raises for this urllib3 one (failover.classify reads them):
    given up after retries, by its last reason; else by the error itself; ConnectionError otherwise."""
    if isinstance(err, u3.MaxRetryError):
        reason = err.reason
        if isinstance(reason, u3.ConnectTimeoutError) and not isinstance(reason, u3.NewConnectionError):
            return requests.exceptions.ConnectTimeout(err)
        table, subject = _BY_REASON, reason
    else:
        table, subject = _BY_ERROR, err
    kind = next((theirs for ours, theirs in table if isinstance(subject, ours)), requests.exceptions.ConnectionError)
    return kind(err)


def vault_session(addr: str, cacert: str | None, skip_verify: bool, retry: Retry, pool_size: int) -> VaultSession:
    """The proxy and CA-bundle variables are read once, here, as requests would read them on every call
    with trust_env on: that re-reading was 13% of a bootstrap's CPU (py-spy --gil, bench/README.md).
    hvac ignores verify= when given a session, so the session carries it."""
    session = VaultSession(retry, pool_size)
    session.proxies = requests.utils.get_environ_proxies(addr)  # honours NO_PROXY for Vault's host
    env_bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    session.verify = False if skip_verify else (cacert or env_bundle or True)
    return session
