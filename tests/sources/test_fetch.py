"""Slow, silent, throttling and hostile servers: every HTTP answer has one wall-clock deadline,
a stop takes effect within a second, the app fetches only from allowed public hosts (every
redirect checked again), and no remote body is repeated in a message."""

from __future__ import annotations

import math
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pandas as pd
import pytest
import requests
from stand_servers import Stand, drip, jpeg, send, silent

import galaxy_core.terminal  # noqa: F401 - the CLI's download loads it (and torch): here, so bounds time fetches
from galaxy_core.base.config import DownloadConfig
from galaxy_core.cli import EXIT_PARTIAL_FAILURE, main
from galaxy_core.sources import catalogue_io, fetch
from galaxy_core.sources.catalogue import CatalogueError, read_catalogue
from galaxy_core.sources.cutouts import CutoutClient, CutoutError, fetch_cutout, retry_after_s
from galaxy_core.sources.download import download_cutouts
from galaxy_core.sources.fetch import FetchError, FetchStalled, FetchStopped, FetchTimeout, get
from galaxy_core.sources.hosts import ENV_NAME, HostNotAllowed, HostPolicy

CATALOGUE = b"id,ra,dec,frac_smooth,frac_features,frac_artifact,label\ng1,10.0,-5.0,0.9,0.05,0.05,Elliptical\n"


def seconds_to_stop(worker: threading.Thread, started: threading.Event, stop: threading.Event,
                    join_s: float) -> float:
    """Start ``worker``, wait until it is under way, then set ``stop``: the seconds it took to end
    (infinite when it had not ended within ``join_s``)."""
    worker.start()
    assert started.wait(10)
    stop.set()
    stopped_at = time.monotonic()
    worker.join(join_s)
    return math.inf if worker.is_alive() else time.monotonic() - stopped_at


def one_galaxy() -> pd.DataFrame:
    return pd.DataFrame({"id": ["g1"], "ra": [10.0], "dec": [-5.0]})


def test_a_dripping_cutout_server_fails_within_twice_the_timeout(tmp_path: Path) -> None:
    holder: list[Stand] = []
    with Stand({"/getjpeg": drip(lambda: holder[0])}) as stand:
        holder.append(stand)
        config = DownloadConfig(out_dir=tmp_path / "out", cutout_url=stand.url("/getjpeg"), retries=0, timeout_s=1.0)
        start = time.monotonic()
        report = download_cutouts(one_galaxy(), config)
        elapsed = time.monotonic() - start
    assert elapsed < 2 * config.timeout_s + 0.5, elapsed
    assert report.failed == {"g1": "Timeout: no complete answer within 1 s (after 1 attempt)"}


def test_a_dripping_catalogue_fails_with_a_clear_message(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(catalogue_io, "CATALOGUE_DEADLINE_S", 1.0)
    holder: list[Stand] = []
    with Stand({"/cat.csv": drip(lambda: holder[0])}) as stand:
        holder.append(stand)
        start = time.monotonic()
        code = main(["download", "--catalogue", stand.url("/cat.csv"), "--out", str(tmp_path / "o")])
        elapsed = time.monotonic() - start
    err = capsys.readouterr().err
    assert code != 0 and elapsed < 1.0 + 5 and "no complete answer within 1 s" in err and "Traceback" not in err


@pytest.mark.parametrize("behaviour", [drip, silent])
def test_stop_ends_a_download_from_a_stalled_server_within_a_second(tmp_path: Path, behaviour) -> None:
    holder: list[Stand] = []
    with Stand({"/getjpeg": behaviour(lambda: holder[0])}) as stand:
        holder.append(stand)
        config = DownloadConfig(out_dir=tmp_path / "out", cutout_url=stand.url("/getjpeg"), retries=3,
                                timeout_s=60.0, workers=2)
        stop, result = threading.Event(), {}
        catalogue = pd.DataFrame({"id": [f"g{i}" for i in range(6)], "ra": [10.0 + i for i in range(6)],
                                  "dec": [0.0] * 6})
        worker = threading.Thread(target=lambda: result.update(report=download_cutouts(catalogue, config,
                                                                                       stop=stop)))
        assert seconds_to_stop(worker, stand.started, stop, join_s=5) < 1.5
    assert result["report"].downloaded == 0 and not result["report"].failed  # stopped is not failed


def test_a_stopped_client_raises_stopped_not_a_failure() -> None:
    stop = threading.Event()
    stop.set()
    client = CutoutClient(DownloadConfig(out_dir=Path("."), cutout_url="http://127.0.0.1:9/getjpeg"))
    with pytest.raises(FetchStopped):
        client.fetch(1.0, 2.0, stop)


def test_retry_after_is_honoured_and_bounded(tmp_path: Path) -> None:
    seen: list[float] = []

    def throttled(handler: BaseHTTPRequestHandler) -> None:
        seen.append(time.monotonic())
        if len(seen) == 1:
            send(handler, 429, b"slow down", Retry_After="1")
        else:
            send(handler, 200, jpeg(128), Content_Type="image/jpeg")

    with Stand({"/getjpeg": throttled}) as stand:
        config = DownloadConfig(out_dir=tmp_path / "out", cutout_url=stand.url("/getjpeg"), retries=2,
                                backoff_s=0.0, timeout_s=5.0)
        report = download_cutouts(one_galaxy(), config)
    assert report.ok and len(seen) == 2 and seen[1] - seen[0] >= 0.95
    assert retry_after_s("100000", 30.0) == 30.0 and retry_after_s("1e400", 90) == 0.0
    assert retry_after_s("soon", 30.0) == 0.0 and retry_after_s("100000", 300.0) == 60.0


def test_only_cutouts_of_the_requested_size_are_accepted_and_not_asked_again(tmp_path: Path) -> None:
    with Stand({"/getjpeg": lambda h: send(h, 200, jpeg(1), Content_Type="image/jpeg")}) as stand:
        config = DownloadConfig(out_dir=tmp_path / "out", cutout_url=stand.url("/getjpeg"), retries=3,
                                backoff_s=0.0)
        report = download_cutouts(one_galaxy(), config)
        assert stand.hits == ["/getjpeg"]
    assert report.failed == {"g1": "answer is a 1x1 image, not the 128x128 cutout asked for (after 1 attempt)"}
    assert not list((tmp_path / "out" / "images").iterdir())


def test_a_non_image_answer_is_not_asked_again_but_a_busy_page_is(tmp_path: Path) -> None:
    routes = {"/text/getjpeg": lambda h: send(h, 200, b"error: no such coordinates", Content_Type="text/plain"),
              "/busy/getjpeg": lambda h: send(h, 200, b"<html>Service busy</html>", Content_Type="text/html")}
    with Stand(routes) as stand:
        for path, attempts in (("/text/getjpeg", 1), ("/busy/getjpeg", 3)):
            config = DownloadConfig(out_dir=tmp_path / path.strip("/").replace("/", "-"), cutout_url=stand.url(path),
                                    retries=2, backoff_s=0.0)
            report = download_cutouts(one_galaxy(), config)
            assert report.failed["g1"].endswith(f"(after {attempts} attempt{'s' if attempts > 1 else ''})")
        assert stand.hits.count("/text/getjpeg") == 1 and stand.hits.count("/busy/getjpeg") == 3


# --- the app's allowed hosts -----------------------------------------------------------------

def test_the_default_policy_allows_the_survey_hosts_and_refuses_the_rest() -> None:
    policy = HostPolicy()
    assert {"skyserver.sdss.org", "data.galaxyzoo.org"} <= set(policy.hosts)
    for url in ("http://127.0.0.1:8501/_stcore/health", "http://localhost/", "http://169.254.169.254/latest",
                "http://10.0.0.1/x", "http://[::1]/", "file:///etc/passwd", "http://evil.example.org/cat.csv"):
        with pytest.raises(HostNotAllowed):
            policy.check(url)
    loopback_named = HostPolicy.parse("localhost")
    with pytest.raises(HostNotAllowed, match="loopback, private or link-local"):
        loopback_named.check("http://localhost:8501/")  # a listed name is not enough for a private address
    HostPolicy.parse("127.0.0.1").check("http://127.0.0.1:8501/")
    HostPolicy.parse("localhost,127.0.0.0/8").check("http://localhost:8501/")
    assert "skyserver.sdss.org" in HostPolicy.parse("+127.0.0.1").hosts


def test_the_app_policy_refuses_an_internal_url_the_same_whether_a_port_is_open_or_not() -> None:
    with Stand({"/_stcore/health": lambda h: send(h, 200, b"ok-secret-internal-body")}) as stand:
        messages = []
        for url in (stand.url("/_stcore/health"), "http://127.0.0.1:9/_stcore/health"):
            with pytest.raises(CatalogueError) as caught:
                read_catalogue(url, policy=HostPolicy())
            messages.append(str(caught.value).replace(url, "URL"))
        assert stand.hits == []  # never even asked
    assert messages[0] == messages[1] and "does not fetch from 127.0.0.1" in messages[0]
    assert "secret" not in messages[0]


def test_explicitly_allowed_loopback_is_fetched_and_every_redirect_is_checked() -> None:
    routes = {"/cat.csv": lambda h: send(h, 200, CATALOGUE),
              "/moved.csv": lambda h: send(h, 302, b"", Location="/cat.csv"),
              "/away.csv": lambda h: send(h, 302, b"", Location="http://169.254.169.254/latest/meta-data"),
              "/error.csv": lambda h: send(h, 500, b"secret stack trace of the server")}
    with Stand(routes) as stand:
        allowed = HostPolicy.parse("127.0.0.1")
        assert read_catalogue(stand.url("/moved.csv"), policy=allowed)["id"].tolist() == ["g1"]
        with pytest.raises(CatalogueError, match="does not fetch from 169.254.169.254"):
            read_catalogue(stand.url("/away.csv"), policy=allowed)
        with pytest.raises(CatalogueError) as caught:
            read_catalogue(stand.url("/error.csv"), policy=allowed)
        assert "HTTP 500" in str(caught.value) and "secret" not in str(caught.value)
        assert read_catalogue(stand.url("/moved.csv"))["id"].tolist() == ["g1"]  # the CLI: no policy


def test_coordinate_fetch_obeys_the_policy_and_its_deadline() -> None:
    holder: list[Stand] = []
    with Stand({"/getjpeg": drip(lambda: holder[0])}) as stand:
        holder.append(stand)
        with pytest.raises(CutoutError, match="does not fetch from 127.0.0.1"):
            fetch_cutout(10.0, -5.0, stand.url("/getjpeg"), policy=HostPolicy())
        assert stand.hits == []
        start = time.monotonic()
        with pytest.raises(CutoutError, match="no complete answer within 1 s"):
            fetch_cutout(10.0, -5.0, stand.url("/getjpeg"), timeout_s=1.0, retries=0,
                         policy=HostPolicy.parse("127.0.0.1"))
        assert time.monotonic() - start < 2.5


def test_policy_reads_its_setting_from_the_environment() -> None:
    assert HostPolicy.from_env({ENV_NAME: "a.example.org, .b.example.org"}).hosts == ("a.example.org",
                                                                                       ".b.example.org")
    policy = HostPolicy.from_env({ENV_NAME: ".b.example.org"})
    assert policy.host_allowed("x.b.example.org") and policy.host_allowed("b.example.org")
    assert not policy.host_allowed("evilb.example.org")
    assert HostPolicy.from_env({}) == HostPolicy()


def test_cli_download_still_fetches_any_host_it_is_told(tmp_path: Path) -> None:
    with Stand({"/getjpeg": lambda h: send(h, 200, jpeg(128)), "/cat.csv": lambda h: send(h, 200, CATALOGUE)}) as s:
        code = main(["download", "--catalogue", s.url("/cat.csv"), "--out", str(tmp_path / "o"),
                     "--cutout-url", s.url("/getjpeg")])
    assert code == 0 and (tmp_path / "o" / "images" / "g1.jpg").is_file()
    assert code != EXIT_PARTIAL_FAILURE


# --- every wait has a deadline: the status line and headers, and each stall in a body -----------

def drip_headers(stand_of: Callable[[], Stand]) -> Callable[[BaseHTTPRequestHandler], None]:
    """The status line and headers one byte every 0.2 s: each read brings something, so a
    per-read timeout alone never fires."""
    def route(handler: BaseHTTPRequestHandler) -> None:
        head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + b"X-Pad: " + b"a" * 5000 + b"\r\n\r\nok"
        stand_of().started.set()
        for i in range(len(head)):
            handler.wfile.write(head[i:i + 1])
            handler.wfile.flush()
            if stand_of().release.wait(0.2):
                return
    return route


def test_a_server_dripping_its_headers_is_cut_off_at_the_timeout() -> None:
    holder: list[Stand] = []
    with Stand({"/getjpeg": drip_headers(lambda: holder[0]), "/cat.csv": drip_headers(lambda: holder[0])}) as stand:
        holder.append(stand)
        start = time.monotonic()
        with pytest.raises(FetchTimeout, match="no answer within 1 s"):
            get(stand.url("/getjpeg"), timeout_s=1.0, max_bytes=1000)
        assert time.monotonic() - start < 1.0 + 5
        start = time.monotonic()
        with pytest.raises(CutoutError, match="within 1 s"):
            fetch_cutout(10.0, -5.0, stand.url("/getjpeg"), timeout_s=1.0, retries=0,
                         policy=HostPolicy.parse("127.0.0.1"))
        assert time.monotonic() - start < 1.0 + 5
        start = time.monotonic()
        with pytest.raises(CatalogueError, match="no answer within 1 s"):
            read_catalogue(stand.url("/cat.csv"), timeout_s=1.0)
        assert time.monotonic() - start < 1.0 + 5


@pytest.mark.parametrize("behaviour", [drip_headers, drip, silent])
def test_stop_ends_a_fetch_promptly_whatever_part_of_the_answer_it_waits_for(behaviour) -> None:
    holder: list[Stand] = []
    with Stand({"/x": behaviour(lambda: holder[0])}) as stand:
        holder.append(stand)
        stop, caught = threading.Event(), []

        def fetch() -> None:
            try:
                get(stand.url("/x"), timeout_s=120.0, max_bytes=100_000, stop=stop)
            except FetchError as exc:  # handed to the test's thread
                caught.append(exc)

        assert seconds_to_stop(threading.Thread(target=fetch), stand.started, stop, join_s=10) < 2.0
    assert len(caught) == 1 and isinstance(caught[0], FetchStopped)


def test_stop_ends_a_fetch_whose_connection_is_never_accepted() -> None:
    """A 127.0.0.1 listener whose backlog is full drops further handshakes, as a firewalled host
    would: the connection waits, and the stop event still ends it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(8):  # fill the backlog: later handshakes go unanswered
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        stop, caught, started = threading.Event(), [], threading.Event()

        def fetch_it() -> None:
            started.set()
            try:
                get(f"http://127.0.0.1:{port}/x", timeout_s=120.0, max_bytes=1000, stop=stop)
            except (FetchError, requests.RequestException) as exc:
                caught.append(exc)

        assert seconds_to_stop(threading.Thread(target=fetch_it), started, stop, join_s=10) < 2.0
        assert len(caught) == 1 and isinstance(caught[0], FetchStopped), caught
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


@pytest.mark.parametrize("behaviour, reason", [(drip, "stalled: less than 1,024 bytes in 1 s"),
                                               (silent, "stalled: no data for 1 s")])
def test_download_timeout_bounds_a_stalled_catalogue_and_names_the_stall(tmp_path: Path, capsys, behaviour,
                                                                         reason: str) -> None:
    holder: list[Stand] = []
    with Stand({"/cat.csv": behaviour(lambda: holder[0])}) as stand:
        holder.append(stand)
        start = time.monotonic()
        code = main(["download", "--catalogue", stand.url("/cat.csv"), "--out", str(tmp_path / "o"),
                     "--timeout", "1"])
        elapsed = time.monotonic() - start
    err = capsys.readouterr().err
    assert code != 0 and elapsed < 1.0 + 5, elapsed
    assert reason in err and "Traceback" not in err


def test_a_slow_but_steady_body_is_not_a_stall() -> None:
    body = b"y" * 6000

    def steady(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        for start in range(0, len(body), 1500):  # 1,500 bytes every 0.25 s: 6 kB/s
            handler.wfile.write(body[start:start + 1500])
            handler.wfile.flush()
            time.sleep(0.25)

    with Stand({"/x": steady}) as stand:
        answer = get(stand.url("/x"), timeout_s=0.5, total_s=30.0, max_bytes=100_000)
    assert answer.body == body


def test_a_stalled_body_is_a_timeout_a_retry_may_cure() -> None:
    holder: list[Stand] = []
    with Stand({"/x": silent(lambda: holder[0])}) as stand:
        holder.append(stand)
        with pytest.raises(FetchStalled):
            get(stand.url("/x"), timeout_s=0.5, total_s=30.0, max_bytes=100_000)


# --- the address judged is the address used -----------------------------------------------

@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Names -> the answers successive look-ups give (the last one repeats); other names as usual.
    Every test below uses it only for names that must never be connected to."""
    answers: dict[str, list[str]] = {}
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):  # type: ignore[no-untyped-def]
        queue = answers.get(str(host).lower())
        if queue is None:
            return real(host, port, *args, **kwargs)
        address = queue.pop(0) if len(queue) > 1 else queue[0]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers


@pytest.mark.parametrize("shape", ["{loop}\\@skyserver.sdss.org/x", "{loop}\\skyserver.sdss.org/x",
                                   "skyserver.sdss.org@{loop}/x", "{loop}#@skyserver.sdss.org/x",
                                   "{loop}\t@skyserver.sdss.org/x", "skyserver.sdss.org\u3002{loop}/x",
                                   "{loop}%2f@skyserver.sdss.org/x"])
def test_a_url_that_parsers_read_differently_is_refused(fake_dns: dict[str, list[str]], shape: str) -> None:
    """``urlsplit`` reads ``http://127.0.0.1:PORT\\@skyserver.sdss.org/x`` as a URL of
    skyserver.sdss.org while urllib3 connects to 127.0.0.1: the policy must judge what is used."""
    fake_dns["skyserver.sdss.org"] = ["93.184.216.34"]  # public, so only the parsing can refuse
    with Stand({"/x": lambda h: send(h, 200, b"id,ok-secret-internal-body\n1,2\n")}) as stand:
        url = "http://" + shape.format(loop=stand.url("").removeprefix("http://"))
        with pytest.raises(CatalogueError) as caught:
            read_catalogue(url, policy=HostPolicy())
        with pytest.raises(CutoutError):
            fetch_cutout(10.0, -5.0, url, timeout_s=2.0, retries=0, policy=HostPolicy())
        with pytest.raises(HostNotAllowed):
            HostPolicy().check(url, resolve=False)
        assert stand.hits == []
    assert "secret" not in str(caught.value)


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The addresses sockets are opened to; only 127.0.0.1 is really connected to."""
    connected: list[str] = []
    connect = fetch._connect

    def recording_connect(address, port, *args, **kwargs):  # type: ignore[no-untyped-def]
        connected.append(str(address))
        if str(address) != "127.0.0.1":
            raise ConnectionRefusedError("tests connect only to 127.0.0.1")
        return connect(address, port, *args, **kwargs)

    monkeypatch.setattr(fetch, "_connect", recording_connect)
    return connected


def test_a_name_that_resolves_elsewhere_when_connecting_gets_nowhere(fake_dns: dict[str, list[str]],
                                                                     connections: list[str]) -> None:
    """DNS rebinding: public at the first look-up, loopback at the next. The fetch looks up once and
    connects to what it checked, so the loopback server is never reached."""
    fake_dns["rebind.example.org"] = ["93.184.216.34", "127.0.0.1"]
    with Stand({"/cat.csv": lambda h: send(h, 200, CATALOGUE)}) as stand:
        url = stand.url("/cat.csv").replace("127.0.0.1", "rebind.example.org")
        with pytest.raises(CatalogueError) as caught:
            read_catalogue(url, policy=HostPolicy.parse("rebind.example.org"), timeout_s=2.0)
        assert stand.hits == []
    assert connections == ["93.184.216.34"] and "secret" not in str(caught.value)


def test_the_connection_goes_to_the_address_the_policy_allowed(fake_dns: dict[str, list[str]],
                                                               connections: list[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The socket connects to an address the policy's own look-up returned and checked; a later
    look-up's answer (here a private address) is never asked for, and the URL's host name still
    goes in the Host header, as TLS still uses it for the certificate."""
    fake_dns["pinned.example.org"] = ["127.0.0.1", "10.255.255.1"]
    checked: list[str] = []
    addresses = HostPolicy.addresses

    def checked_addresses(self: HostPolicy, host: str, port: int) -> list:
        found = addresses(self, host, port)
        checked.extend(str(a) for a in found)
        return found

    monkeypatch.setattr(HostPolicy, "addresses", checked_addresses)
    seen_hosts: list[str] = []

    def echo_host(handler: BaseHTTPRequestHandler) -> None:
        seen_hosts.append(handler.headers["Host"])
        send(handler, 200, CATALOGUE)

    with Stand({"/cat.csv": echo_host}) as stand:
        port = stand.httpd.server_address[1]
        url = f"http://pinned.example.org:{port}/cat.csv"
        answer = get(url, timeout_s=5.0, max_bytes=10_000, policy=HostPolicy.parse("pinned.example.org,127.0.0.1"))
    assert answer.body == CATALOGUE and seen_hosts == [f"pinned.example.org:{port}"]
    assert connections == ["127.0.0.1"] and checked == ["127.0.0.1"]


def test_no_text_of_a_fetched_answer_reaches_a_visitor() -> None:
    routes = {"/plain": lambda h: send(h, 200, b"ok-secret-internal-body\n"),
              "/values": lambda h: send(h, 200, b"id,ra,dec,label\nsecret-id,secret-ra,1,Spiral\n")}
    with Stand(routes) as stand:
        for path in routes:
            with pytest.raises(CatalogueError) as caught:
                read_catalogue(stand.url(path), policy=HostPolicy.parse("127.0.0.1"))
            assert "secret" not in str(caught.value) and stand.url(path) in str(caught.value)
        with pytest.raises(CatalogueError, match="found ok-secret"):  # the command line's own user sees why
            read_catalogue(stand.url("/plain"))


@pytest.fixture
def tls_certificate(tmp_path: Path) -> Path:
    """A self-signed certificate (and key, in one file) for pinned.example.org."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    pem = tmp_path / "pinned.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=pinned.example.org", "-addext", "subjectAltName=DNS:pinned.example.org",
                    "-keyout", str(pem), "-out", str(pem)], check=True, capture_output=True, timeout=60)
    return pem


def test_a_pinned_https_fetch_still_checks_the_certificate_for_the_host_name(
        fake_dns: dict[str, list[str]], connections: list[str], tls_certificate: Path) -> None:
    """Only the address is pinned: TLS sends the URL's host name (SNI) and checks the certificate
    against it, so a name that merely resolves to the same address is refused by TLS."""
    fake_dns["pinned.example.org"] = ["127.0.0.1"]
    fake_dns["other.example.org"] = ["127.0.0.1"]
    server_names: list[str | None] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls_certificate)
    context.sni_callback = lambda sock, name, ctx: server_names.append(name)
    with Stand({"/cat.csv": lambda h: send(h, 200, CATALOGUE)}) as stand:
        stand.httpd.socket = context.wrap_socket(stand.httpd.socket, server_side=True)
        port = stand.httpd.server_address[1]
        policy = HostPolicy.parse("pinned.example.org,other.example.org,127.0.0.1")
        session = fetch.new_session(policy)
        session.verify = str(tls_certificate)
        answer = get(f"https://pinned.example.org:{port}/cat.csv", timeout_s=10.0, max_bytes=10_000,
                     session=session, policy=policy)
        assert answer.body == CATALOGUE and server_names == ["pinned.example.org"]
        with pytest.raises(requests.exceptions.SSLError):
            get(f"https://other.example.org:{port}/cat.csv", timeout_s=10.0, max_bytes=10_000,
                session=session, policy=policy)
    assert set(connections) == {"127.0.0.1"}
