// Scenarios that tests/test_faktory.py runs with the published Node.js
// Faktory client (the npm package faktory-worker), against a procession
// server's Faktory listener.  FAKTORY_URL names the server; each
// scenario prints one JSON object per line for the test to read.
"use strict";
const faktory = require("faktory-worker");

const fs = require("fs");

const url = process.env.FAKTORY_URL;
// A TLS listener's certificate to trust (faktory-worker takes TLS as
// Node's tls.connect options, not from its URL).
const tlsOptions = process.env.FAKTORY_CA
  ? { ca: fs.readFileSync(process.env.FAKTORY_CA), servername: "localhost" }
  : undefined;
const say = (event) => console.log(JSON.stringify(event));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(check, ms = 15000) {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error("timed out waiting");
    await sleep(20);
  }
}

const scenarios = {
  // Push one job, a bulk of two, a job that fails; run them with a worker;
  // INFO; move the failed job from retries to dead with MUTATE.
  async basic() {
    const client = await faktory.connect({ url });
    const one = client.job("add", 1, 2);
    one.custom = { tenant: "acme" };
    await one.push();
    const bulk = [client.job("add", 3, 4), client.job("add", 5, 6)];
    const rejected = await client.pushBulk(bulk);
    const failing = client.job("explode", "x");
    failing.retry = 3;
    await failing.push();
    const ran = [];
    const failed = [];
    faktory.register("add", async (a, b) => { ran.push(a + b); });
    faktory.register("explode", async () => { throw new Error("it blew up"); });
    const worker = await faktory.work({ url, queues: ["default"], concurrency: 2, beatInterval: 0.2 });
    worker.on("fail", ({ job }) => failed.push(job.jid));
    await until(() => ran.length >= 3 && failed.includes(failing.jid));
    await worker.stop();
    const info = await client.info();
    say({ ran: ran.sort((x, y) => x - y), failed, rejected,
          jids: { one: one.jid, failing: failing.jid, bulk: bulk.map((j) => j.jid) },
          info });
    await client.retries.withJids(failing.jid).kill();
    say({ killed: failing.jid });
    await client.close();
  },

  // Connect (with the password in FAKTORY_URL, if any) and push one job.
  async hello() {
    const client = await faktory.connect({ url, tlsOptions });
    const job = client.job("hello", "world");
    await job.push();
    say({ pushed: job.jid });
    await client.close();
  },

  // PUSHB with rejected jobs, MUTATE on scheduled and dead jobs, FLUSH.
  async manage() {
    const client = await faktory.connect({ url });
    const first = client.job("managed", 1);
    await first.push();
    const short = client.job("managed", 2);
    short.jid = "short";
    const fresh = client.job("managed", 3);
    const again = client.job("managed", 1);
    again.jid = first.jid;
    const rejected = await client.pushBulk([again, short, fresh]);
    const later = client.job("later", "a");
    later.at = new Date(Date.now() + 3600 * 1000);
    await later.push();
    const gone = client.job("later", "b");
    gone.at = new Date(Date.now() + 3600 * 1000);
    gone.queue = "other";
    await gone.push();
    await client.scheduled.withJids(later.jid).requeue();
    await client.scheduled.ofType("later").discard();
    let flush;
    try { await client.flush(); flush = "OK"; } catch (e) { flush = String(e.message || e); }
    say({ rejected, flush, jids: { first: first.jid, fresh: fresh.jid, later: later.jid, gone: gone.jid } });
    await client.close();
  },

  // A worker that runs jobs of type "native" (pushed by a native client)
  // and prints each job as it received it.
  async work() {
    const seen = [];
    faktory.use(async (ctx, next) => { seen.push(ctx.job); say({ job: ctx.job }); await next(); });
    faktory.register("native", async () => {});
    const worker = await faktory.work({ url, queues: [process.env.QUEUE || "default"], concurrency: 1, beatInterval: 0.2, wid: process.env.WID });
    await until(() => seen.length >= Number(process.env.COUNT || 1), 20000);
    await worker.stop();
    say({ done: true });
  },

  // A worker that starts its job and never finishes it (the test kills it).
  async hold() {
    faktory.register("hold", async () => { say({ holding: true }); await sleep(600000); });
    await faktory.work({ url, queues: ["default"], concurrency: 1, beatInterval: 0.2, wid: process.env.WID });
    say({ started: true });
    await sleep(600000);
  },

  // A worker that waits to be quieted through BEAT (the operator quiets it
  // from the API or UI; a server shutdown terminates it).
  async quiet() {
    const worker = await faktory.work({ url, queues: ["idle"], concurrency: 1, beatInterval: 0.2, wid: process.env.WID });
    say({ started: worker.wid });
    await until(() => worker.quieted, 30000);
    say({ quieted: true });
    await worker.stop();
  },

  // A worker told to terminate by a server shutdown stops by itself.
  async terminate() {
    const worker = await faktory.work({ url, queues: ["idle"], concurrency: 1, beatInterval: 0.2, wid: process.env.WID });
    const stopped = new Promise((resolve) => {
      const original = worker.stop.bind(worker);
      worker.stop = async () => { say({ terminated: true }); resolve(); return original(); };
    });
    say({ started: worker.wid });
    await stopped;
  },
};

scenarios[process.argv[2]]().then(
  () => process.exit(0),
  (e) => { say({ error: String(e && e.stack || e) }); process.exit(1); },
);
