"""Drives procrastinate for `orchbench peers`: one role per process, started by orchbench.

Every role connects, prints `ready`, and waits for `go` on stdin, so that orchbench starts all
processes of a run at one moment. `progress ...` lines go to orchbench's stderr; the result is one
JSON line on stdout. The protocol is described in bench/src/peers/driver.rs.

  enqueue --clients C (--seconds S | --jobs N) --timeout T
                              C coroutines, each deferring one job per call (at most T seconds)
  worker --concurrency C      a procrastinate worker, until SIGTERM; then the jobs it ran
  watch --timeout T           from `go` until no job is todo or doing (at most T seconds); ok is
                              the number of succeeded jobs
  schema                      applies procrastinate's schema
  reset                       empties the jobs table
"""

import argparse
import asyncio
import json
import sys
import time

import procrastinate

QUEUE = "bench"


def make_app(conninfo, pool):
    connector = procrastinate.PsycopgConnector(conninfo=conninfo, min_size=pool, max_size=pool)
    app = procrastinate.App(connector=connector)

    ran = [0]

    @app.task(name="noop", queue=QUEUE)
    async def noop():
        ran[0] += 1

    return app, noop, ran


async def barrier():
    print("ready", flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    if line.strip() != "go":
        raise SystemExit(f"expected go, got {line!r}")


async def enqueue(args):
    app, noop, _ = make_app(args.conninfo, args.clients)
    async with app.open_async():
        # Open every connection before the clock starts, as orchbench does for the daemon.
        await asyncio.gather(*(app.connector.execute_query_async("SELECT 1") for _ in range(args.clients)))
        await barrier()
        latencies = []
        start = time.monotonic()
        stop_at = start + (args.seconds if args.seconds else args.timeout)

        async def client(count):
            done = 0
            while True:
                if count is not None and done >= count:
                    return
                if time.monotonic() >= stop_at:
                    return
                t = time.perf_counter_ns()
                await noop.defer_async()
                latencies.append((time.perf_counter_ns() - t) // 1000)
                done += 1

        counts = [None] * args.clients
        if args.jobs:
            counts = [args.jobs // args.clients + (1 if k < args.jobs % args.clients else 0) for k in range(args.clients)]
        async def progress():
            while True:
                await asyncio.sleep(2)
                print(f"progress {len(latencies)} enqueued", flush=True)

        ticker = asyncio.ensure_future(progress())
        await asyncio.gather(*(client(n) for n in counts))
        ticker.cancel()
        elapsed = time.monotonic() - start
    print(json.dumps({"role": "enqueue", "ok": len(latencies), "seconds": elapsed, "latencies_us": latencies}), flush=True)


async def worker(args):
    app, _, ran = make_app(args.conninfo, args.concurrency + 2)
    async with app.open_async():
        await barrier()
        start = time.monotonic()
        # Returns on SIGTERM (procrastinate's own signal handling), after the jobs in hand finish.
        await app.run_worker_async(queues=[QUEUE], concurrency=args.concurrency, wait=True)
        elapsed = time.monotonic() - start
    print(json.dumps({"role": "worker", "ok": ran[0], "seconds": elapsed}), flush=True)


async def watch(args):
    app, _, _ = make_app(args.conninfo, 1)
    async with app.open_async():
        await barrier()
        start = time.monotonic()
        polls = 0
        shown = start
        while True:
            row = await app.connector.execute_query_one_async(
                "SELECT count(*) AS n FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"
            )
            polls += 1
            now = time.monotonic()
            if row["n"] == 0 or now - start >= args.timeout:
                break
            if now - shown >= 2:
                print(f"progress {row['n']} left after {now - start:.0f} s", flush=True)
                shown = now
            await asyncio.sleep(args.poll)
        elapsed = time.monotonic() - start
        row = await app.connector.execute_query_one_async(
            "SELECT count(*) AS n FROM procrastinate_jobs WHERE status = 'succeeded'"
        )
    print(json.dumps({"role": "watch", "ok": row["n"], "seconds": elapsed, "polls": polls}), flush=True)


async def schema(args):
    app, _, _ = make_app(args.conninfo, 1)
    async with app.open_async():
        await app.schema_manager.apply_schema_async()


async def reset(args):
    app, _, _ = make_app(args.conninfo, 1)
    async with app.open_async():
        await app.connector.execute_query_async("TRUNCATE procrastinate_jobs RESTART IDENTITY CASCADE")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--conninfo", required=True)
    sub = p.add_subparsers(dest="role", required=True)
    e = sub.add_parser("enqueue")
    e.add_argument("--clients", type=int, required=True)
    e.add_argument("--seconds", type=float)
    e.add_argument("--jobs", type=int)
    e.add_argument("--timeout", type=float, required=True)
    w = sub.add_parser("worker")
    w.add_argument("--concurrency", type=int, required=True)
    wa = sub.add_parser("watch")
    wa.add_argument("--poll", type=float, default=0.01)
    wa.add_argument("--timeout", type=float, required=True)
    sub.add_parser("schema")
    sub.add_parser("reset")
    args = p.parse_args()
    asyncio.run({"enqueue": enqueue, "worker": worker, "watch": watch, "schema": schema, "reset": reset}[args.role](args))


if __name__ == "__main__":
    main()
