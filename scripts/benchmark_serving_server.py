"""The server scripts/benchmark_serving.py starts for `--launch CMD` or `--config SHAPE`, and stops after.

`--config SHAPE` serves `jaxllm serve <folder> --load-format dummy`, the folder made by
bench_common.model_folder (config.json only). The server loads a tokenizer from the folder, so a stand-in
is written beside the config: a word-level tokenizer with one token `t<id>` per id of the model's
vocabulary. The benchmark sends token ids, and the server decodes the generated ids with it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_stand_in_tokenizer(folder: str) -> None:
    """tokenizer.json + tokenizer_config.json covering config.json's vocab_size, unless the folder has one."""
    if os.path.exists(os.path.join(folder, "tokenizer.json")):
        return
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    with open(os.path.join(folder, "config.json")) as f:
        vocab = json.load(f)["vocab_size"]
    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins the words with spaces
    tok.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 10**9}, f)


def server_command(args: argparse.Namespace) -> tuple[list[str], str]:
    """(the serve command line, the base URL it will answer on) for --launch or --config."""
    if args.config:
        from bench_common import model_folder

        folder, load_format = model_folder(argparse.Namespace(model=None, config=args.config))
        write_stand_in_tokenizer(folder)
        cmd = ["jaxllm", "serve", folder, "--load-format", load_format]
    else:
        cmd = shlex.split(args.launch)
    if cmd[:1] == ["jaxllm"] and shutil.which("jaxllm") is None:  # a source checkout, not installed
        cmd = [sys.executable, "-m", "jaxllm.entrypoints.cli", *cmd[1:]]
    cmd += shlex.split(args.server_args)
    flags = {tok.split("=", 1)[0]: i for i, tok in enumerate(cmd)}
    if "--port" not in flags:
        cmd += ["--port", str(free_port())]
        flags["--port"] = len(cmd) - 2
    if "--host" not in flags:
        cmd += ["--host", "127.0.0.1"]
    port_flag = cmd[flags["--port"]]
    port = port_flag.split("=", 1)[1] if "=" in port_flag else cmd[flags["--port"] + 1]
    return cmd, f"http://127.0.0.1:{port}"


def healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def launched_server(args: argparse.Namespace) -> Iterator[str]:
    """Start the server, yield its URL once /health answers 200 (within --server-timeout), stop it after
    (SIGTERM: in-flight requests finish, then it exits; killed if it is still there a minute later)."""
    cmd, url = server_command(args)
    log_path = args.server_log or tempfile.mkstemp(prefix="jaxllm-serve-", suffix=".log")[1]
    print(f"starting: {shlex.join(cmd)}\nserver log: {log_path}", flush=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + args.server_timeout
        while not healthy(url):
            if time.monotonic() > deadline:
                raise SystemExit(f"no healthy server within {args.server_timeout:g} s; see {log_path}")
            with contextlib.suppress(subprocess.TimeoutExpired):  # the poll interval, and exit detection
                proc.wait(timeout=0.25)
                tail = Path(log_path).read_text(errors="replace")[-3000:]
                raise SystemExit(f"the server exited with status {proc.returncode}:\n{tail}")
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
