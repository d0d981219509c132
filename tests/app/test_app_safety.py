"""The dashboard shared with strangers: bounded requests, jobs that belong to the browser session
that started them, untrusted text drawn as text, no server paths, no tracebacks, and jobs run in a
child process that cannot take the server down (issue 20)."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import tomllib
from pathlib import Path

import pytest
from app_fixtures import fresh_caches  # noqa: F401 (autouse)
from streamlit.testing.v1 import AppTest
from test_app import REPO, by_label, fill_tiny_training, open_page, png_bytes, texts, wait_for

from app_support.child import in_child
from app_support.common import job_registry
from app_support.jobs import JobBusyError, JobRegistry, NotYourJobError
from app_support.limits import UPLOAD_MB, LimitError, ServerLimits, image_sizes
from app_support.tasks import download_task
from app_support.text import escape_markdown, public_text
from galaxy_core.base import ConfigError, DownloadConfig, GalaxyError, TrainConfig
from galaxy_core.model.bundle import MAX_CARD_BYTES, list_models
from galaxy_core.training.memory import estimate_training_memory

PLANTED = "![t](http://elsewhere/t.png) [click](http://elsewhere/x) <b>bold</b> www.elsewhere.org"


# --- what a markdown element would draw ------------------------------------------------------

LINK = re.compile(r"(?<!\\)!?\[[^\]]*(?<!\\)\]\(")
TAG = re.compile(r"(?<!\\)<[A-Za-z/!]")
BARE_URL = re.compile(r"(?<!\\)://|www\.", re.IGNORECASE)


def links_and_images(markdown: str) -> list[str]:
    """What a markdown renderer (CommonMark + GFM autolinks) would draw as a link, an image or
    HTML from ``markdown``: unescaped ``[..](``, ``<tag``, bare URLs."""
    return [kind for kind, pattern in (("link or image", LINK), ("html", TAG), ("bare URL", BARE_URL))
            if pattern.search(markdown)]


def drawn_markdown(at: AppTest) -> list[str]:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption]
    for kind in (at.info, at.warning, at.error, at.success, at.title, at.header, at.subheader):
        parts += [e.value for e in kind]
    parts += [str(p.proto.text) for p in at.get("progress")]
    return [str(p) for p in parts]


def test_escaped_text_draws_no_link_image_or_html() -> None:
    assert links_and_images(PLANTED)  # the check sees what an attacker plants
    escaped = escape_markdown(PLANTED)
    assert links_and_images(escaped) == []
    assert escaped.count("elsewhere") == 3  # still readable as text
    assert escape_markdown("a\nb" + "x" * 1000, 20).startswith("a b")  # one line, clipped
    assert len(escape_markdown("x" * 200_000)) < 400


def test_server_folders_are_named_not_shown(tmp_path: Path) -> None:
    data = tmp_path / "srv" / "data"
    text = public_text(f"no catalogue.csv in {data}/gz2 or {tmp_path}/srv", [(data, "data")])
    assert str(data) not in text and "data/gz2" in text


# --- bounds on what a visitor can ask for ----------------------------------------------------

def config(**settings) -> TrainConfig:
    return TrainConfig(Path("."), Path("."), **settings)


def test_the_memory_estimate_grows_with_every_setting_and_refuses_the_forms_maxima() -> None:
    biggest = config(batch_size=1024, width=128, depth=8, input_size=128, crop=128)
    assert 150e9 <= estimate_training_memory(biggest, 6442) <= 215e9
    base = estimate_training_memory(config(), 1000)
    assert base < 2 * 1024**3  # the defaults fit a laptop
    for change in ({"batch_size": 128}, {"width": 64}, {"depth": 3}, {"input_size": 96}, {"arch": "plain_cnn"}):
        if change.get("arch"):
            assert estimate_training_memory(config(**change), 1000) != base
        else:
            assert estimate_training_memory(config(**change), 1000) > base, change
    assert estimate_training_memory(config(), 10_000) > base  # the packed cache
    with pytest.raises(LimitError, match=r"need about 1\d\d GB of memory; this server allows 8\.0 GB"):
        ServerLimits().check_job_memory(estimate_training_memory(biggest, 6442))
    ServerLimits().check_job_memory(base)


def test_limits_are_read_from_the_environment_in_one_place() -> None:
    limits = ServerLimits.from_env({"GALAXY_MAX_JOB_MEMORY_GB": "2", "GALAXY_MAX_UPLOAD_FILES": "3",
                                    "GALAXY_MAX_DOWNLOAD_GALAXIES": "100", "GALAXY_DEMO_MODE": "1"})
    assert (limits.max_job_bytes, limits.max_upload_files, limits.max_download_galaxies, limits.demo_mode) == \
        (2 * 1024**3, 3, 100, True)
    assert ServerLimits.from_env({}) == ServerLimits()
    bad_settings = ({"GALAXY_MAX_UPLOAD_FILES": "many"}, {"GALAXY_MAX_JOB_MEMORY_GB": "-1"},
                    {"GALAXY_DEMO_MODE": "perhaps"})
    for bad in bad_settings:
        with pytest.raises(ConfigError):
            ServerLimits.from_env(bad)
    with pytest.raises(LimitError, match="1,000,000 galaxies asked for; this server downloads at most 100"):
        limits.check_download(1_000_000)


def test_uploads_are_capped_by_count_and_pixels_read_from_headers() -> None:
    limits = ServerLimits(max_upload_files=100, max_upload_megapixels=0.5)
    sizes = image_sizes([png_bytes((800, 600)), png_bytes((800, 600)), b"not an image"])
    assert sizes == [(800, 600), (800, 600), (0, 0)]
    with pytest.raises(LimitError, match=r"1\.0 megapixels in all; this server decodes at most 0\.5 megapixels"):
        limits.check_uploads(sizes)
    with pytest.raises(LimitError, match="101 images at once"):
        ServerLimits().check_uploads([(1, 1)] * 101)


def test_one_upload_size_and_no_error_details_in_the_server_settings() -> None:
    settings = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert settings["server"]["maxUploadSize"] == UPLOAD_MB
    assert settings["client"]["showErrorDetails"] == "none"
    assert "max_upload_size" not in (REPO / "app_pages" / "dataset.py").read_text()


def test_a_catalogue_that_cannot_be_read_leaves_no_folder(tmp_path: Path) -> None:
    out = tmp_path / "data" / "bad"
    task = download_task(out, b"\x00\x01 not a catalogue", DownloadConfig(out_dir=out))
    with pytest.raises(GalaxyError):
        task(lambda event: None, threading.Event())
    assert not out.exists()


def test_a_huge_card_is_refused_unread(tmp_path: Path, trained_tiny_model: Path) -> None:
    import shutil

    folder = tmp_path / "huge"
    shutil.copytree(trained_tiny_model, folder)
    card = json.loads((folder / "card.json").read_text())
    card["notes"] = "x" * MAX_CARD_BYTES
    (folder / "card.json").write_text(json.dumps(card))
    [info] = list_models(tmp_path)
    assert info.card is None and "larger than 1 MB" in info.error


# --- jobs belong to their session, and run in a child process --------------------------------

def test_only_the_session_that_started_a_job_stops_it() -> None:
    registry = JobRegistry()
    job = registry.start("train", "mine", lambda report, stop: stop.wait(30), owner="alice")
    with pytest.raises(NotYourJobError, match="started by another visitor"):
        registry.stop("train", "mallory")
    with pytest.raises(JobBusyError, match="busy with another visitor's train job"):
        registry.start("train", "theirs", lambda report, stop: None, owner="mallory")
    assert not job.snapshot().stop_requested
    assert registry.stop("train", "alice") and job.wait(10)
    assert job.snapshot().owned_by("alice") and not job.snapshot().owned_by("mallory")


def ignores_stop():
    """A task whose loop never looks at its stop event: only terminating the child ends it."""
    def run(report, stop):
        report("started")
        threading.Event().wait()
    return run


def crashes(code: int):
    def run(report, stop):
        report("started")
        if code < 0:
            os.kill(os.getpid(), -code)
        os._exit(code)
    return run


def counts(n: int):
    def run(report, stop):
        for i in range(n):
            report(i)
        return {"pid": os.getpid(), "nice": os.nice(0)}
    return run


def test_a_child_job_reports_progress_and_runs_politely_in_another_process() -> None:
    job = JobRegistry().start("demo", "count", in_child(counts, 3))
    assert job.wait(60)
    snap = job.snapshot()
    assert snap.state == "done", snap.error
    assert snap.result["pid"] != os.getpid() and snap.result["nice"] > os.nice(0)
    assert snap.progress == 2


def test_stop_ends_a_child_that_never_looks_at_its_stop_event() -> None:
    registry = JobRegistry()
    job = registry.start("demo", "stubborn", in_child(ignores_stop))
    wait_until(lambda: job.snapshot().progress == "started")
    registry.stop("demo")
    assert job.wait(10)
    assert job.snapshot().state == "stopped"


@pytest.mark.parametrize("code, words", [(3, "exit code 3"), (-signal.SIGKILL, "killed by signal 9")])
def test_a_crashed_or_killed_child_is_a_failed_job_with_one_line(code: int, words: str) -> None:
    job = JobRegistry().start("demo", "crash", in_child(crashes, code))
    assert job.wait(60)
    snap = job.snapshot()
    assert snap.state == "failed" and words in snap.error and "\n" not in snap.error


def wait_until(condition, seconds: float = 60.0) -> None:
    done = threading.Event()
    for _ in range(int(seconds * 20)):
        if condition():
            return
        done.wait(0.05)
    raise AssertionError("condition not reached")


# --- the pages -------------------------------------------------------------------------------

@pytest.fixture
def stocked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trained_tiny_model: Path) -> dict[str, Path]:
    """A data root with a copy of the tiny dataset and a models root with the tiny model."""
    import shutil

    card = json.loads((trained_tiny_model / "card.json").read_text())
    roots = {"data": tmp_path / "data", "models": tmp_path / "models"}
    data = roots["data"] / "tiny"
    shutil.copytree(card["provenance"]["config"]["data_dir"], data)
    shutil.copytree(trained_tiny_model, roots["models"] / "tiny")
    card["provenance"]["config"]["data_dir"] = str(data)
    (roots["models"] / "tiny" / "card.json").write_text(json.dumps(card))
    monkeypatch.setenv("GALAXY_DATA_ROOT", str(roots["data"]))
    monkeypatch.setenv("GALAXY_MODELS_ROOT", str(roots["models"]))
    return {**roots, "dataset": data, "model": roots["models"] / "tiny", "tmp": tmp_path}


PAGES = [None, "app_pages/dataset.py", "app_pages/train.py", "app_pages/results.py", "app_pages/classify.py"]


@pytest.mark.parametrize("page", PAGES)
def test_no_page_shows_a_server_path(stocked, page) -> None:
    at = open_page(page)
    shown = "\n".join(drawn_markdown(at) + [str(s.options) for s in at.selectbox]
                      + [str(s.help) for s in at.selectbox] + [str(at.query_params)])
    assert str(stocked["tmp"]) not in shown and str(REPO) not in shown


@pytest.mark.parametrize("page", [None, "app_pages/results.py"])
def test_planted_ids_and_model_names_draw_no_link_or_image(stocked, page) -> None:
    evaluation_file = stocked["model"] / "evaluation.json"
    evaluation = json.loads(evaluation_file.read_text())
    assert evaluation["misclassified"], "the tiny model gets some test galaxies wrong"
    for row in evaluation["misclassified"]:
        row["id"] = PLANTED
    evaluation_file.write_text(json.dumps(evaluation))
    catalogue = stocked["dataset"] / "catalogue.csv"
    lines = catalogue.read_text().splitlines()
    header = lines[0].split(",")
    column = header.index("id") if "id" in header else None
    if column is not None:  # the Home page's sample captions show the galaxy ids
        rows = [line.split(",") for line in lines[1:]]
        for row in rows:
            row[column] = "![t](http://elsewhere/t.png)"
        catalogue.write_text("\n".join([lines[0], *(",".join(r) for r in rows)]) + "\n")
    bad = stocked["models"] / "x_y"
    bad.mkdir()
    card = json.loads((stocked["model"] / "card.json").read_text())
    (bad / "card.json").write_text(json.dumps({**card, "classes": PLANTED}))
    at = open_page(page)
    drawn = drawn_markdown(at)
    assert any("elsewhere" in text for text in drawn), "the planted text is shown"
    for text in drawn:
        assert links_and_images(text) == [], text


def test_another_session_cannot_see_stop_or_overwrite_a_running_job(stocked) -> None:
    owner = open_page("app_pages/train.py")
    fill_tiny_training(owner, "long-run", 200)
    by_label(owner.button, "Start training").click().run()
    try:
        visitor = open_page("app_pages/train.py")
        said = texts(visitor)
        assert "busy training a model for another visitor" in said and "long-run" not in said
        assert not [b for b in visitor.button if b.label == "Stop"]
        assert "Training for another visitor" in "\n".join(c.value for c in visitor.sidebar.caption)
        assert by_label(visitor.button, "Start training").disabled
        with pytest.raises(NotYourJobError):  # nor through the registry the pages share
            job_registry().stop("train", visitor.session_state["_owner"])
        assert job_registry().snapshot("train").running
    finally:
        by_label(owner.button, "Stop").click().run()
        wait_for(owner, lambda a: bool(a.warning) or bool(a.error) or bool(a.success), 60)
    assert any("stopped" in w.value for w in owner.warning)


def test_an_existing_name_is_never_overwritten_from_the_browser(stocked) -> None:
    (stocked["models"] / "someone-elses").mkdir()
    at = open_page("app_pages/train.py")
    fill_tiny_training(at, "someone-elses", 1)
    by_label(at.button, "Start training").click().run()
    assert any("a model named 'someone-elses' already exists" in e.value for e in at.error)
    assert job_registry().snapshot("train") is None
    at = open_page("app_pages/dataset.py")
    by_label(at.text_input, "Dataset name").input("tiny")
    by_label(at.button, "Download").click().run()
    assert any("a dataset named 'tiny' already exists" in e.value for e in at.error)
    assert job_registry().snapshot("download") is None


def test_a_job_that_does_not_fit_is_refused_with_the_figures(stocked, monkeypatch) -> None:
    monkeypatch.setenv("GALAXY_MAX_JOB_MEMORY_GB", "0.5")
    at = open_page("app_pages/train.py")
    fill_tiny_training(at, "too-big", 1)
    by_label(at.button, "Start training").click().run()
    assert any("of memory; this server allows 0.5 GB per job" in e.value for e in at.error), texts(at)
    assert job_registry().snapshot("train") is None


def test_another_sessions_failed_download_is_not_shown(stocked) -> None:
    def fails(report, stop):
        raise ConfigError("the catalogue at /srv/secret/place could not be read")

    job = job_registry().start("download", "theirs", fails, owner="another-session")
    assert job.wait(10)
    at = open_page("app_pages/dataset.py")
    assert not at.error and "secret" not in texts(at)


def test_too_many_uploads_are_refused_before_decoding(stocked, monkeypatch) -> None:
    monkeypatch.setenv("GALAXY_MAX_UPLOAD_FILES", "2")
    at = open_page("app_pages/classify.py")
    assert "Up to 2 images" in texts(at)
    at.file_uploader[0].set_value([(f"g{i}.png", png_bytes((64, 64)), "image/png") for i in range(3)]).run()
    assert any("3 images at once; this server classifies at most 2" in e.value for e in at.error)
    assert not [m for m in at.markdown if m.value.startswith("### Predicted")]


def test_demo_mode_offers_nothing_that_writes(stocked, monkeypatch) -> None:
    monkeypatch.setenv("GALAXY_DEMO_MODE", "1")
    dataset = open_page("app_pages/dataset.py")
    assert "Downloading is turned off" in texts(dataset)
    assert not [b for b in dataset.button if b.label == "Download"]
    train = open_page("app_pages/train.py")
    assert "Training is turned off" in texts(train)
    assert not [b for b in train.button if b.label == "Start training"]
    classify = open_page("app_pages/classify.py")
    assert not classify.error


def test_the_model_list_is_read_from_disk_only_when_a_card_changes(stocked, monkeypatch) -> None:
    from app_support import common

    reads = []
    real = common.list_models
    monkeypatch.setattr(common, "list_models", lambda root: reads.append(root) or real(root))
    open_page("app_pages/results.py")
    first = len(reads)
    assert first == 1
    open_page("app_pages/results.py")
    assert len(reads) == first
    card = stocked["model"] / "card.json"
    os.utime(card, ns=(card.stat().st_atime_ns, card.stat().st_mtime_ns + 10**9))
    open_page("app_pages/results.py")
    assert len(reads) == first + 1


def test_the_model_lock_is_held_for_the_forward_pass_only(stocked) -> None:
    from galaxy_core.base import PredictConfig
    from galaxy_core.serving import Classifier, classify_uploads

    classifier = Classifier.load(PredictConfig(model_dir=stocked["model"]))
    held = threading.Lock()
    framed_while_held: list[bool] = []
    frame = classifier.frame
    classifier.frame = lambda image: framed_while_held.append(held.locked()) or frame(image)  # type: ignore[method-assign]
    results = classify_uploads(classifier, [("a.png", png_bytes((300, 200))), ("b.png", png_bytes((64, 64)))],
                               forward_lock=held)
    assert framed_while_held == [False, False]
    assert all(r.prediction.classified or r.prediction.warning for r in results)  # noise: no galaxy, said why


def test_caches_are_kept_under_the_cap_least_recently_used_first(tmp_path: Path) -> None:
    from app_support.disk import mark_used, trim_caches

    root = tmp_path / "cache"
    caches = []
    for i, name in enumerate(["old", "middle", "new"]):
        folder = root / name
        folder.mkdir(parents=True)
        (folder / "meta.json").write_text("{}")
        (folder / "shard-0.npy").write_bytes(b"\0" * 1000)
        os.utime(folder / "meta.json", (1_000_000 + i, 1_000_000 + i))
        caches.append(folder)
    building = root / ".new-1234"  # a build in progress: no meta.json yet
    building.mkdir()
    (building / "part.npy").write_bytes(b"\0" * 5000)
    mark_used(caches[0])  # the oldest was just used again
    assert trim_caches(root, 2500) == [caches[1]]
    assert trim_caches(root, 100, keep=[caches[2]]) == [caches[0]]
    assert caches[2].is_dir() and building.is_dir()


def test_a_thin_image_and_a_huge_echoed_value_give_one_short_line(stocked) -> None:
    at = open_page("app_pages/classify.py")
    at.file_uploader[0].set_value([("thin.png", png_bytes((40000, 5)), "image/png")]).run()
    assert not at.exception, [e.value for e in at.exception]
    at = open_page("app_pages/classify.py")
    by_label(at.text_input, "Cutout URL").input("http://" + "x" * 200_000)
    by_label(at.button, "Fetch and classify").click().run()
    assert not at.exception
    assert at.error and all(len(e.value) < 1000 and "\n" not in e.value for e in at.error)
