"""Secrets pass through to the clients that need them and are never printed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from genre.core.broker import free_port
from genre.core.config import load_config
from genre.core.vectorstore import VectorStoreError, open_vector_store
from genre.demo import _demo_config, _secret_env
from genre.streams.app import _broker_settings

PASSWORD = "s3cr3t-sasl-pw-417"
API_KEY = "s3cr3t-qdrant-key-905"

SECURE_ENV = {
    "GENRE_KAFKA__SECURITY__PROTOCOL": "SASL_SSL",
    "GENRE_KAFKA__SECURITY__SASL_MECHANISM": "SCRAM-SHA-512",
    "GENRE_KAFKA__SECURITY__SASL_USERNAME": "genre",
    "GENRE_KAFKA__SECURITY__SASL_PASSWORD": PASSWORD,
    "QDRANT_API_KEY": API_KEY,
}


def test_sasl_settings_reach_librdkafka_and_faust() -> None:
    config = load_config(environ=SECURE_ENV)
    conf = config.kafka.client_config()
    assert conf["security.protocol"] == "SASL_SSL"
    assert conf["sasl.mechanism"] == "SCRAM-SHA-512"
    assert conf["sasl.username"] == "genre"
    assert conf["sasl.password"] == PASSWORD
    creds = _broker_settings(config)["broker_credentials"]
    assert creds.username == "genre"
    assert creds.password == PASSWORD
    assert str(creds.mechanism.value) == "SCRAM-SHA-512"
    assert creds.ssl_context is not None
    assert PASSWORD not in repr(creds)


def test_config_objects_never_show_secrets() -> None:
    config = load_config(environ=SECURE_ENV)
    assert PASSWORD not in repr(config) and API_KEY not in repr(config)
    dumped = str(config.public_dump())
    assert PASSWORD not in dumped and API_KEY not in dumped


def test_demo_writes_no_secret_to_its_worker_config(tmp_path: Path) -> None:
    config = load_config(environ=SECURE_ENV)
    _, path = _demo_config(config, tmp_path, free_port(), free_port(), None)
    text = path.read_text()
    assert PASSWORD not in text and API_KEY not in text
    assert _secret_env(config) == {"QDRANT_API_KEY": API_KEY}


def test_unreachable_qdrant_error_hides_the_api_key() -> None:
    env = {"QDRANT_URL": f"http://127.0.0.1:{free_port()}", "QDRANT_API_KEY": API_KEY}
    with pytest.raises(VectorStoreError) as err:
        open_vector_store(load_config(environ=env))
    assert "qdrant.url" in str(err.value)
    assert API_KEY not in str(err.value)


def test_worker_failure_output_hides_the_sasl_password(tmp_path: Path) -> None:
    config = tmp_path / "genre.yaml"
    config.write_text(
        f"data_dir: {tmp_path}\n"
        f"kafka: {{bootstrap_servers: '127.0.0.1:{free_port()}', connect_timeout_s: 2}}\n"
    )
    env = {**SECURE_ENV, "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-m", "genre", "worker", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert out.returncode == 1
    assert PASSWORD not in out.stdout + out.stderr
    assert API_KEY not in out.stdout + out.stderr
