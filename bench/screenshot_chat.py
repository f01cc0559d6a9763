"""A screenshot of the chat page at `/` answering a question with a real model, for docs/serving.md.

    .venv/bin/python bench/screenshot_chat.py    # qwen2.5-coder-0.5b-instruct -> docs/images/chat-page.png

Starts `qwen25 serve` on 127.0.0.1 (the model must be fetched: `qwen25 models fetch NAME`), opens the page in
headless Chromium (Debian's `chromium` + `chromium-driver`, driven by selenium), types the question, waits for the
streamed answer to finish, and saves the window as a PNG (written atomically).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from bench_server import free_port, start_server
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from qwen25.io import atomic_path

QUESTION = "Write a Python function that checks whether a string is a palindrome, ignoring case and spaces."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct", help="model name or directory to serve")
    ap.add_argument("--question", default=QUESTION)
    ap.add_argument("--max-tokens", default="400", help="the page's max tokens field")
    ap.add_argument("--out", type=Path, default=Path("docs/images/chat-page.png"))
    ap.add_argument("--size", default="1100,1080", help="window width,height in pixels")
    args = ap.parse_args()
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not browser or not driver:
        raise FileNotFoundError("no chromium / chromedriver on PATH (Debian: apt-get install chromium chromium-driver)")

    port = free_port()
    server = start_server(args.model, port, max_batch=1, dtype="bfloat16", kernels=None,
                          name=Path(args.model).name)
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 f"--window-size={args.size}", "--hide-scrollbars"):
        options.add_argument(flag)
    page = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    try:
        page.get(f"http://127.0.0.1:{port}/")
        WebDriverWait(page, 60).until(lambda p: p.find_element(By.ID, "model").text)
        for field, value in (("temperature", "0"), ("max_tokens", args.max_tokens)):
            page.find_element(By.ID, field).clear()
            page.find_element(By.ID, field).send_keys(value)
        page.find_element(By.ID, "prompt").send_keys(args.question, Keys.ENTER)
        WebDriverWait(page, 900).until(
            lambda p: p.find_element(By.ID, "answer-1").get_attribute("data-done") == "true")
        print(page.find_element(By.ID, "answer-1").text)
        with atomic_path(args.out) as tmp:
            tmp.write_bytes(page.get_screenshot_as_png())
    finally:
        page.quit()
        server.terminate()
        server.wait(30)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
