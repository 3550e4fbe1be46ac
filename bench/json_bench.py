"""Which JSON path should cacheman's responses take? FastAPI 0.16x serializes typed responses itself (pydantic
core, in Rust) and deprecates ORJSONResponse, so measure: the same payloads through
(a) a typed return with response_model, (b) ORJSONResponse, (c) a plain dict (jsonable_encoder + json),
(d) a prebuilt Response of orjson bytes. uvicorn, one worker; wrk, 32 connections, from another process.

Run: .venv/bin/python bench/json_bench.py [--seconds 5] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.load import Server, fmt, free_port, median_run, wait_http, wrk

APP = r'''
import warnings
warnings.filterwarnings("ignore")
import orjson
from fastapi import FastAPI
from fastapi.responses import ORJSONResponse, Response
from pydantic import BaseModel

class Member(BaseModel):
    user_id: str
    role: str

class Members(BaseModel):
    room_id: str
    version: int
    members: list[Member]

class Membership(BaseModel):
    room_id: str
    user_id: str
    role: str

SMALL = {"room_id": "r1", "user_id": "u1", "role": "member"}
BIG = {"room_id": "r1", "version": 7, "members": [{"user_id": f"user-{i:04d}", "role": "member"} for i in range(100)]}
app = FastAPI()

@app.get("/typed/small", response_model=Membership)
async def ts() -> Membership:
    return Membership(**SMALL)

@app.get("/typed/big", response_model=Members)
async def tb() -> Members:
    return Members.model_validate(BIG)

@app.get("/orjson/small")
async def os_():
    return ORJSONResponse(SMALL)

@app.get("/orjson/big")
async def ob():
    return ORJSONResponse(BIG)

@app.get("/dict/small")
async def ds():
    return SMALL

@app.get("/dict/big")
async def db():
    return BIG

@app.get("/bytes/small")
async def bs():
    return Response(orjson.dumps(SMALL), media_type="application/json")

@app.get("/bytes/big")
async def bb():
    return Response(orjson.dumps(BIG), media_type="application/json")
'''


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    port = free_port()
    app_file = Path("/tmp/hotpath_json_bench_app.py")
    app_file.write_text(APP)
    argv = [sys.executable, "-m", "uvicorn", "hotpath_json_bench_app:app", "--port", str(port), "--log-level", "warning",
            "--no-access-log", "--loop", "uvloop", "--http", "httptools"]
    with Server(argv, cwd="/tmp"):
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/dict/small")
        print(f"JSON response paths, uvicorn 1 worker, wrk -c32, {args.seconds:.0f}s x {args.repeats} (median)")
        for size in ("small", "big"):
            results = {}
            for _ in range(args.repeats):  # interleave variants so drift hits them alike
                for variant in ("typed", "orjson", "dict", "bytes"):
                    results.setdefault(variant, []).append(wrk(f"{base}/{variant}/{size}", seconds=args.seconds))
            ref = median_run(results["typed"]).rps
            for variant, runs in results.items():
                m = median_run(runs)
                print(f"  {size:5} {variant:7} {fmt(m)}  ratio to typed {m.rps / ref:4.2f}")


if __name__ == "__main__":
    main()
