"""core/config.py and the sample genre.yaml: defaults, errors, env overrides, secrets, CLI."""

from __future__ import annotations

import os
import re
import types
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel
from typer.testing import CliRunner

from genre.cli import app
from genre.core.config import ConfigError, GenreConfig, load_config

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLE = REPO_ROOT / "genre.yaml"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No GENRE_* / QDRANT_* from the outer environment, and no ./genre.yaml in cwd."""
    for name in list(os.environ):
        if name.startswith(("GENRE_", "QDRANT_")):
            monkeypatch.delenv(name)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)


def _write(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


# ---------------------------------------------------------------------------
# The sample genre.yaml
# ---------------------------------------------------------------------------


def _model_of(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """(pydantic model inside annotation, whether it is a list of them)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is list and args:
        inner, _ = _model_of(args[0])
        return inner, True
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            inner, is_list = _model_of(arg)
            if inner is not None:
                return inner, is_list
    return None, False


def _leaf_keys(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every leaf key path; list items are marked with '[]'."""
    out = []
    for name, field in model.model_fields.items():
        inner, is_list = _model_of(field.annotation)
        path = (*prefix, name)
        if inner is None:
            out.append(path)
        elif is_list:
            out.extend(_leaf_keys(inner, (*path, "[]")))
        else:
            out.extend(_leaf_keys(inner, path))
    return out


def _has_key(node: Any, path: tuple[str, ...]) -> bool:
    if not path:
        return True
    head, rest = path[0], path[1:]
    if head == "[]":
        return isinstance(node, list) and bool(node) and all(_has_key(n, rest) for n in node)
    return isinstance(node, dict) and head in node and _has_key(node[head], rest)


def test_sample_yaml_equals_defaults() -> None:
    cfg = load_config(SAMPLE, environ={})
    assert cfg.model_dump() == GenreConfig().model_dump()
    assert cfg.source == str(SAMPLE)


def test_leaf_walk_sees_nested_and_list_keys() -> None:
    # Guard the walker itself: it must reach nested sections and list items.
    keys = {".".join(k) for k in _leaf_keys(GenreConfig)}
    assert "kafka.security.sasl_password" in keys
    assert "kafka.topics.dlq.partitions" in keys
    assert "scorer.candidates.[].weight" in keys
    assert "scorer.filters.[].params" in keys
    assert "streams.user_vector.params" in keys


def test_sample_yaml_documents_every_key() -> None:
    raw = yaml.safe_load(SAMPLE.read_text())
    missing = [".".join(k) for k in _leaf_keys(GenreConfig) if not _has_key(raw, k)]
    assert not missing, f"genre.yaml does not show these keys: {missing}"


def _uncommented_keys(text: str) -> list[str]:
    """Key lines with no comment above them in their top-level section."""
    lines = text.splitlines()
    key_re = re.compile(r"^(\s*)(- )?([A-Za-z_][\w-]*):")
    comment_seen = False
    uncommented = []
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            comment_seen = True
            continue
        m = key_re.match(line)
        if not m:
            continue
        if not m.group(1) and not m.group(2):  # a top-level key opens a new section
            direct = i > 0 and lines[i - 1].lstrip().startswith("#")
            comment_seen = direct
            if not direct and line.split(":", 1)[1].strip():
                uncommented.append(line)  # a top-level scalar with no comment right above
            continue
        if not comment_seen:
            uncommented.append(line.strip())
    return uncommented


def _sections_without_comment(text: str) -> list[str]:
    """Top-level mapping sections whose block holds no comment at all."""
    out = []
    for section, value in yaml.safe_load(text).items():
        if not isinstance(value, dict):
            continue
        block = text.split(f"\n{section}:\n", 1)[1]
        block = re.split(r"\n(?=[A-Za-z_])", block, maxsplit=1)[0]
        if "#" not in block:
            out.append(section)
    return out


def test_comment_checks_catch_undocumented_keys() -> None:
    text = "# app\napp_id: x\ndata_dir: y\n\nkafka:\n  bootstrap_servers: a\n"
    assert _uncommented_keys(text) == ["data_dir: y", "bootstrap_servers: a"]
    assert _sections_without_comment(text) == ["kafka"]


def test_sample_yaml_is_commented() -> None:
    text = SAMPLE.read_text()
    assert not _uncommented_keys(text), "genre.yaml keys without a comment above them"
    assert not _sections_without_comment(text), "genre.yaml sections without a comment"


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


def test_unknown_key_names_key_file_and_suggestion(tmp_path: Path) -> None:
    path = _write(tmp_path / "genre.yaml", {"kafka": {"bootstrap_server": "x:1"}})
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    msg = str(info.value)
    assert "kafka.bootstrap_server" in msg
    assert str(path) in msg
    assert "did you mean 'bootstrap_servers'" in msg


def test_unknown_key_without_close_match_lists_valid_keys(tmp_path: Path) -> None:
    path = _write(tmp_path / "genre.yaml", {"demo": {"zzzzzz": 1}})
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    msg = str(info.value)
    assert "demo.zzzzzz" in msg
    assert "valid keys here" in msg
    assert "rate_eps" in msg and "drain_timeout_s" in msg


def test_unknown_key_in_list_item(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "genre.yaml", {"scorer": {"candidates": [{"name": "ann", "wieght": 2.0}]}}
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    msg = str(info.value)
    assert "scorer.candidates.0.wieght" in msg
    assert "did you mean 'weight'" in msg


def test_wrong_type_names_key_and_value(tmp_path: Path) -> None:
    path = _write(tmp_path / "genre.yaml", {"scorer": {"top_k": "lots"}})
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    msg = str(info.value)
    assert "scorer.top_k" in msg
    assert "'lots'" in msg
    assert str(path) in msg


def test_out_of_range_value_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path / "genre.yaml", {"kafka": {"embedded": {"port": 70000}}})
    with pytest.raises(ConfigError, match=r"kafka\.embedded\.port.*70000"):
        load_config(path, environ={})


def test_duplicate_candidate_sources_rejected(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "genre.yaml",
        {"scorer": {"candidates": [{"name": "ann"}, {"name": "trending"}, {"name": "ann"}]}},
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    msg = str(info.value)
    assert "unique" in msg
    assert "ann" in msg
    assert "scorer" in msg


def test_empty_candidate_list_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path / "genre.yaml", {"scorer": {"candidates": []}})
    with pytest.raises(ConfigError, match="at least one candidate source"):
        load_config(path, environ={})


@pytest.mark.parametrize(
    ("section", "key"),
    [("streams", "batch_size"), ("streams", "batch_within_ms"), ("scorer", "batch_within_ms")],
)
def test_keys_removed_by_the_hot_path_rebuild_are_refused(
    tmp_path: Path, section: str, key: str
) -> None:
    """Batches now start when data arrives: an old genre.yaml that still tunes the batch
    timers is refused with the key named, not silently ignored."""
    path = _write(tmp_path / "genre.yaml", {section: {key: 10.0}})
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert f"{section}.{key}" in str(info.value)


def test_users_writes_and_ranker_candidates(tmp_path: Path) -> None:
    defaults = GenreConfig()
    assert defaults.scorer.users_write_s is None
    assert defaults.users_write_interval == 0.0  # local mode: off
    server = GenreConfig(qdrant={"url": "http://qdrant:6333"})
    assert server.users_write_interval == 1.0
    assert defaults.scorer.users_max_pending == 20_000
    assert defaults.ranker.rank_candidates == 100
    off = GenreConfig(scorer={"users_write_s": 0}, ranker={"rank_candidates": 0})
    assert off.scorer.users_write_s == 0  # 0: no Qdrant users writes
    assert off.ranker.rank_candidates == 0  # 0: the ranker ranks every candidate
    for data, key in (
        ({"scorer": {"users_write_s": -1}}, r"scorer\.users_write_s"),
        ({"scorer": {"users_max_pending": 0}}, r"scorer\.users_max_pending"),
        ({"ranker": {"rank_candidates": -5}}, r"ranker\.rank_candidates"),
    ):
        with pytest.raises(ConfigError, match=key):
            load_config(_write(tmp_path / "genre.yaml", data), environ={})


def test_missing_explicit_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing, environ={})
    msg = str(info.value)
    assert str(missing) in msg
    assert "does not exist" in msg
    assert "--config" in msg  # the fix


def test_missing_file_from_genre_config_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = str(tmp_path / "gone.yaml")
    with pytest.raises(ConfigError, match=r"gone\.yaml"):
        load_config(environ={"GENRE_CONFIG": missing})
    monkeypatch.setenv("GENRE_CONFIG", missing)
    with pytest.raises(ConfigError, match=r"gone\.yaml"):
        load_config()
    # An explicit environ= is hermetic: the process's GENRE_CONFIG is not consulted.
    assert load_config(environ={}).source == "<built-in defaults>"


def test_non_mapping_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mapping"):
        load_config(_write(tmp_path / "list.yaml", "- a\n- b\n"), environ={})
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path / "bad.yaml", "kafka: [unclosed\n"), environ={})


def test_no_file_gives_defaults() -> None:
    cfg = load_config(environ={})
    assert cfg.model_dump() == GenreConfig().model_dump()


def test_cwd_genre_yaml_is_found(tmp_path: Path) -> None:
    _write(Path.cwd() / "genre.yaml", {"app_id": "from-cwd"})
    assert load_config(environ={}).app_id == "from-cwd"


# ---------------------------------------------------------------------------
# Environment overrides and secrets
# ---------------------------------------------------------------------------


def test_env_overrides_apply_over_file(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "genre.yaml", {"kafka": {"bootstrap_servers": "file:1"}, "scorer": {"top_k": 5}}
    )
    cfg = load_config(
        path,
        environ={"GENRE_KAFKA__BOOTSTRAP_SERVERS": "broker:9092", "GENRE_SCORER__TOP_K": "20"},
    )
    assert cfg.kafka.bootstrap_servers == "broker:9092"
    assert cfg.scorer.top_k == 20
    assert type(cfg.scorer.top_k) is int
    # untouched keys keep the file's or the defaults' values
    assert cfg.scorer.batch_size == GenreConfig().scorer.batch_size
    assert "environment" in cfg.source


def test_env_overrides_from_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENRE_KAFKA__BOOTSTRAP_SERVERS", "envhost:9093")
    monkeypatch.setenv("GENRE_STREAMS__HISTORY_SIZE", "7")
    cfg = load_config()
    assert cfg.kafka.bootstrap_servers == "envhost:9093"
    assert cfg.streams.history_size == 7


def test_env_override_with_bad_value_names_key() -> None:
    with pytest.raises(ConfigError, match=r"scorer\.top_k"):
        load_config(environ={"GENRE_SCORER__TOP_K": "many"})


def test_env_override_unknown_key_rejected() -> None:
    with pytest.raises(ConfigError, match=r"scorer\.topk.*did you mean 'top_k'"):
        load_config(environ={"GENRE_SCORER__TOPK": "3"})


def test_qdrant_env_vars_honoured() -> None:
    cfg = load_config(
        environ={"QDRANT_URL": "http://qdrant:6333", "QDRANT_API_KEY": "qdrant-secret"}
    )
    assert cfg.qdrant.url == "http://qdrant:6333"
    assert cfg.qdrant.api_key is not None
    assert cfg.qdrant.api_key.get_secret_value() == "qdrant-secret"


def test_public_dump_masks_secrets() -> None:
    cfg = load_config(
        environ={
            "GENRE_KAFKA__SECURITY__SASL_PASSWORD": "hunter2",
            "GENRE_KAFKA__SECURITY__SASL_USERNAME": "alice",
            "QDRANT_API_KEY": "qdrant-secret",
        }
    )
    dump = cfg.public_dump()
    assert dump["kafka"]["security"]["sasl_password"] == "**********"
    assert dump["qdrant"]["api_key"] == "**********"
    assert dump["kafka"]["security"]["sasl_username"] == "alice"
    text = yaml.safe_dump(dump)
    assert "hunter2" not in text
    assert "qdrant-secret" not in text
    # the real value is still available to the Kafka client
    assert cfg.kafka.client_config()["sasl.password"] == "hunter2"
    # and the dump keeps the list sections intact
    assert [c["name"] for c in dump["scorer"]["candidates"]] == [
        "co_click",
        "ann",
        "trending",
        "profile",
    ]


def test_public_dump_leaves_unset_secrets_visible_as_none() -> None:
    dump = GenreConfig().public_dump()
    assert dump["kafka"]["security"]["sasl_password"] is None
    assert dump["qdrant"]["api_key"] is None


# ---------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------


def test_path_resolves_under_data_dir_next_to_config_file(tmp_path: Path) -> None:
    conf_dir = tmp_path / "conf"
    path = _write(conf_dir / "genre.yaml", {"data_dir": "state"})
    cfg = load_config(path, environ={})
    # cwd is elsewhere (see _clean_env): resolution must not depend on it
    assert Path.cwd() != conf_dir
    assert cfg.path("qdrant") == (conf_dir / "state" / "qdrant").resolve()
    assert cfg.path("models/encoder") == (conf_dir / "state" / "models" / "encoder").resolve()
    absolute = tmp_path / "elsewhere" / "x"
    assert cfg.path(str(absolute)) == absolute


def test_path_with_absolute_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "abs-data"
    path = _write(tmp_path / "conf" / "genre.yaml", {"data_dir": str(data)})
    cfg = load_config(path, environ={})
    assert cfg.path("datasets") == (data / "datasets").resolve()


# ---------------------------------------------------------------------------
# CLI: genre config show
# ---------------------------------------------------------------------------


def test_cli_config_show_prints_yaml_without_secret() -> None:
    runner = CliRunner()
    result = runner.invoke(
        app,
        ["config", "show", "--config", str(SAMPLE)],
        env={"GENRE_KAFKA__SECURITY__SASL_PASSWORD": "hunter2"},
    )
    assert result.exit_code == 0, result.output
    assert "hunter2" not in result.output
    assert "hunter2" not in result.stdout
    shown = yaml.safe_load(result.stdout)
    assert shown["kafka"]["bootstrap_servers"] == GenreConfig().kafka.bootstrap_servers
    assert shown["kafka"]["security"]["sasl_password"] == "**********"
    assert shown["scorer"]["top_k"] == GenreConfig().scorer.top_k


def test_cli_config_show_bad_file_exits_2(tmp_path: Path) -> None:
    path = _write(tmp_path / "genre.yaml", {"kafka": {"bootstrap_server": "x:1"}})
    result = CliRunner().invoke(app, ["config", "show", "--config", str(path)])
    assert result.exit_code == 2, result.output
    out = " ".join(result.output.split())  # rich wraps long lines
    assert "config error" in out
    assert "kafka.bootstrap_server" in out
    assert "did you mean 'bootstrap_servers'" in out


def test_cli_config_show_missing_file_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["config", "show", "--config", str(tmp_path / "x.yaml")])
    assert result.exit_code == 2, result.output
    out = " ".join(result.output.split())  # rich wraps long lines
    assert "does not exist" in out
    assert "--config" in out


def test_a_durable_embedded_broker_lengthens_the_default_fetch_wait(tmp_path: Path) -> None:
    from genre.core.config import DURABLE_FETCH_WAIT_MS

    path = tmp_path / "genre.yaml"
    path.write_text("kafka: {embedded: {durable: true}}\n")
    assert load_config(path, environ={}).kafka.fetch_max_wait_ms == DURABLE_FETCH_WAIT_MS
    path.write_text("kafka: {embedded: {durable: true}, fetch_max_wait_ms: 40}\n")
    assert load_config(path, environ={}).kafka.fetch_max_wait_ms == 40  # a value of one's own
    path.write_text("kafka: {embedded: {durable: false}}\n")
    assert load_config(path, environ={}).kafka.fetch_max_wait_ms == 10


def test_broker_flavor_follows_the_embedded_broker_unless_set(tmp_path: Path) -> None:
    path = tmp_path / "genre.yaml"
    path.write_text("kafka: {bootstrap_servers: '127.0.0.1:19092'}\n")
    tansu = load_config(path, environ={}).kafka
    assert tansu.flavor == "tansu" and tansu.exact_end_offsets
    assert tansu.group_config() == {"session.timeout.ms": 6_000, "heartbeat.interval.ms": 1_000}
    assert tansu.consumer_config()["fetch.wait.max.ms"] == 10

    apache = load_config(path, environ={"GENRE_KAFKA__BOOTSTRAP_SERVERS": "kafka:9092"}).kafka
    assert apache.flavor == "apache" and not apache.exact_end_offsets
    assert apache.group_config() == {"session.timeout.ms": 45_000, "heartbeat.interval.ms": 3_000}
    assert apache.consumer_config()["fetch.wait.max.ms"] == 500

    short = load_config(
        path, environ={"GENRE_KAFKA__FLAVOR": "apache", "GENRE_KAFKA__SESSION_TIMEOUT_MS": "6000"}
    ).kafka
    assert short.group_config() == {"session.timeout.ms": 6_000, "heartbeat.interval.ms": 2_000}

    # An explicit flavour wins over the address: an embedded broker on another port.
    path.write_text("kafka: {bootstrap_servers: '127.0.0.1:40000', flavor: tansu}\n")
    assert load_config(path, environ={}).kafka.exact_end_offsets
    # The workaround switch of before is gone: one setting, with a clear error.
    path.write_text("kafka: {exact_end_offsets: true}\n")
    with pytest.raises(ConfigError, match="exact_end_offsets"):
        load_config(path, environ={})
