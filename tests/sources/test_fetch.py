"""Slow, silent, throttling and hostile servers: every HTTP answer has one wall-clock deadline,
a stop takes effect within a second, the app fetches only from allowed public hosts (every
redirect checked again), and no remote body is repeated in a message."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pandas as pd
import pytest

from galaxy_core.sources import catalogue_io
from galaxy_core.sources.catalogue import CatalogueError, read_catalogue
from galaxy_core.cli import EXIT_PARTIAL_FAILURE, main
from galaxy_core.base.config import DownloadConfig
from galaxy_core.sources.cutouts import CutoutClient, CutoutError, fetch_cutout, retry_after_s
from galaxy_core.sources.download import download_cutouts
from galaxy_core.sources.fetch import FetchStopped
from galaxy_core.sources.hosts import ENV_NAME, HostNotAllowed, HostPolicy
from stand_servers import Stand, drip, jpeg, send, silent

CATALOGUE = b"id,ra,dec,frac_smooth,frac_features,frac_artifact,label\ng1,10.0,-5.0,0.9,0.05,0.05,Elliptical\n"


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
    assert code != 0 and elapsed < 2.5 and "no complete answer within 1 s" in err and "Traceback" not in err


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
        worker.start()
        assert stand.started.wait(10)
        stop.set()
        stopped_at = time.monotonic()
        worker.join(5)
        assert not worker.is_alive() and time.monotonic() - stopped_at < 1.5
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
