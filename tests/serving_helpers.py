"""A server on 127.0.0.1 in a thread of the test process, over a tiny random model with the official vocabulary."""

from __future__ import annotations

import shutil
import threading
import time
from contextlib import contextmanager

import uvicorn

from qwen25.model import build_model, get_preset
from qwen25.serving.server import build_server
from qwen25.tokenizer import load_tokenizer

MODEL = "tiny-test"
MAX_POSITIONS = 512


def tiny_model(seed: int = 0):
    cfg, _ = get_preset("qwen25-tiny")
    model = build_model(cfg.replace(vocab_size=151936, max_position_embeddings=MAX_POSITIONS, dtype="float32"),
                        seed=seed).eval()
    model.generation_config = {}
    return model


@contextmanager
def running_server(model=None, **kwargs):
    """Yields the base URL (http://127.0.0.1:PORT) and the runner while the server runs."""
    app, runner = build_server(model if model is not None else tiny_model(), load_tokenizer("qwen2.5"), MODEL,
                               kernels="linear", **kwargs)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", runner
    finally:
        server.should_exit = True
        thread.join(10)
        runner.stop()


def chromium_paths() -> tuple[str, str] | None:
    """(browser, chromedriver) executables when a Chromium and its driver are installed, else None."""
    browser = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@contextmanager
def headless_chromium(browser: str, driver: str):
    """A headless Chromium under selenium, with the given executables (selenium downloads nothing)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1100,700"):
        options.add_argument(flag)
    session = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    try:
        yield session
    finally:
        session.quit()
