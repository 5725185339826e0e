// Drives graphile-worker for `orchbench peers`: one role per process, started by orchbench.
//
// Every role connects, prints `ready`, and waits for `go` on stdin, so that orchbench starts all
// processes of a run at one moment. `progress ...` lines go to orchbench's stderr; the result is one
// JSON line on stdout. The protocol is described in bench/src/peers/driver.rs.
//
//   enqueue --clients C (--seconds S | --jobs N) --timeout T
//                               C clients on C connections, each adding one job per call with
//                               `graphile_worker.add_job` (WorkerUtils.addJob), at most T seconds
//   worker --concurrency C      a graphile-worker runner, until SIGTERM; then the jobs it ran
//   watch --timeout T           from `go` until no job is left in graphile_worker.jobs (a finished
//                               job is deleted; a failed one stays, to be retried), at most T s
//   schema                      graphile-worker's migrations
//   reset                       empties its jobs and queues

"use strict";
const { run, runMigrations, makeWorkerUtils, Logger } = require("graphile-worker");
const { Pool } = require("pg");
const readline = require("readline");

const TASK = "noop";

function parse(argv) {
  const args = { role: null };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a.startsWith("--")) {
      args[a.slice(2)] = argv[++i];
    } else if (args.role === null) {
      args.role = a;
    } else {
      throw new Error(`unexpected argument ${a}`);
    }
  }
  if (!args.conninfo || !args.role) throw new Error("usage: --conninfo URL ROLE [options]");
  return args;
}

// Warnings and errors to stderr (orchbench's log); a line per job at `info` would cost the worker
// more than the no-op job itself, so it is left out, as a production deployment would.
const logger = new Logger(() => (level, message) => {
  if (level === "error" || level === "warning") console.error(`[${level}] ${message}`);
});

const lines = readline.createInterface({ input: process.stdin });
const pending = [];
const waiting = [];
lines.on("line", (l) => (waiting.length ? waiting.shift()(l) : pending.push(l)));
function nextLine() {
  return pending.length ? Promise.resolve(pending.shift()) : new Promise((r) => waiting.push(r));
}

async function barrier() {
  console.log("ready");
  const line = await nextLine();
  if (line.trim() !== "go") throw new Error(`expected go, got ${JSON.stringify(line)}`);
}

function result(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

// libpq's `key=value ...` (as orchbench passes it: host=/socket/dir user=U dbname=D) → pg's options.
function pgOptions(conninfo, max) {
  const kv = Object.fromEntries(
    conninfo
      .trim()
      .split(/\s+/)
      .map((p) => {
        const i = p.indexOf("=");
        if (i < 0) throw new Error(`bad conninfo part ${p}`);
        return [p.slice(0, i), p.slice(i + 1)];
      })
  );
  return { host: kv.host, port: kv.port ? Number(kv.port) : undefined, user: kv.user, database: kv.dbname, max };
}

function newPool(conninfo, max) {
  return new Pool(pgOptions(conninfo, max));
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function enqueue(args) {
  const clients = Number(args.clients);
  const pool = newPool(args.conninfo, clients);
  const utils = await makeWorkerUtils({ pgPool: pool, logger });
  // Open every connection before the clock starts, as orchbench does for the daemon.
  const held = await Promise.all(Array.from({ length: clients }, () => pool.connect()));
  held.forEach((c) => c.release());
  await barrier();
  const latencies = [];
  const start = process.hrtime.bigint();
  const limitS = args.seconds ? Number(args.seconds) : Number(args.timeout);
  const stopAt = start + BigInt(Math.round(limitS * 1e9));
  const jobs = args.jobs ? Number(args.jobs) : null;
  const counts = Array.from({ length: clients }, (_, k) =>
    jobs === null ? Infinity : Math.floor(jobs / clients) + (k < jobs % clients ? 1 : 0)
  );
  const ticker = setInterval(() => console.log(`progress ${latencies.length} enqueued`), 2000);
  await Promise.all(
    counts.map(async (count) => {
      for (let done = 0; done < count; done++) {
        const t = process.hrtime.bigint();
        if (t >= stopAt) return;
        await utils.addJob(TASK, {});
        latencies.push(Number((process.hrtime.bigint() - t) / 1000n));
      }
    })
  );
  clearInterval(ticker);
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  await utils.release();
  await pool.end();
  result({ role: "enqueue", ok: latencies.length, seconds, latencies_us: latencies });
}

async function worker(args) {
  const concurrency = Number(args.concurrency);
  const pool = newPool(args.conninfo, concurrency + 2);
  let ran = 0;
  await barrier();
  const start = process.hrtime.bigint();
  const runner = await run({
    pgPool: pool,
    concurrency,
    logger,
    noHandleSignals: true,
    taskList: {
      [TASK]: async () => {
        ran++;
      },
    },
  });
  await new Promise((resolve) => process.once("SIGTERM", resolve));
  // Finishes the jobs in hand, then returns.
  await runner.stop();
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  result({ role: "worker", ok: ran, seconds });
  await pool.end();
}

async function watch(args) {
  const pool = newPool(args.conninfo, 1);
  await pool.query("SELECT 1");
  await barrier();
  const start = Date.now();
  const total = Number((await pool.query("SELECT count(*) AS n FROM graphile_worker.jobs")).rows[0].n);
  const timeoutMs = Number(args.timeout) * 1000;
  let polls = 0;
  let shown = start;
  let left;
  for (;;) {
    left = Number((await pool.query("SELECT count(*) AS n FROM graphile_worker.jobs")).rows[0].n);
    polls++;
    const now = Date.now();
    if (left === 0 || now - start >= timeoutMs) break;
    if (now - shown >= 2000) {
      console.log(`progress ${left} left after ${Math.round((now - start) / 1000)} s`);
      shown = now;
    }
    await sleep(10);
  }
  const seconds = (Date.now() - start) / 1000;
  await pool.end();
  result({ role: "watch", ok: total - left, seconds, polls });
}

async function schema(args) {
  const pool = newPool(args.conninfo, 2);
  await runMigrations({ pgPool: pool, logger });
  await pool.end();
}

async function reset(args) {
  const pool = newPool(args.conninfo, 1);
  await pool.query(
    "TRUNCATE graphile_worker._private_jobs, graphile_worker._private_job_queues RESTART IDENTITY CASCADE"
  );
  await pool.end();
}

async function main() {
  const args = parse(process.argv.slice(2));
  const roles = { enqueue, worker, watch, schema, reset };
  const f = roles[args.role];
  if (!f) throw new Error(`unknown role ${args.role}`);
  await f(args);
  lines.close();
}

main().then(
  // On a pipe, stdout is written asynchronously: exit only once the result line (100,000 latencies
  // at full size, several hundred KiB) has been handed over, or it is cut at the pipe's 64 KiB.
  () => process.stdout.write("", () => process.exit(0)),
  (e) => {
    console.error(e && e.stack ? e.stack : e);
    process.exit(1);
  }
);
