// The benchmark's Node.js side (bench/README.rst): the same pushes and
// drain for procession (its TCP protocol spoken directly, docs/protocol.rst)
// and for BullMQ (its own client), so that both sides are measured with a
// client in one language.
//
//   node bench/node/load.mjs push  --system procession --target 7000 --jobs 20000 --connections 16
//   node bench/node/load.mjs drain --system bullmq --target /tmp/redis.sock --jobs 20000
//   node bench/node/load.mjs fill  --system bullmq --target /tmp/redis.sock --jobs 20000
//
// push: --connections connections, each pushing one job at a time and
// waiting for its reply, until --jobs are pushed or --max-seconds pass.
// drain: one consumer takes --jobs queued jobs (procession: READY with
// --credit, an ACK written as soon as each JOB is read; BullMQ: a Worker
// with --concurrency and a no-op handler), then exits.
// fill (BullMQ): queue --jobs jobs with addBulk, 1,000 a call.
// Every job's payload is the harness's: an 80-character string, the job's
// number and the push time.  Prints one line of JSON: jobs, start, end,
// seconds (process.hrtime, from after connecting).

import net from "node:net";
import { parseArgs } from "node:util";

const { positionals, values: opt } = parseArgs({
  allowPositionals: true,
  options: {
    system: { type: "string" },
    target: { type: "string" },
    jobs: { type: "string", default: "20000" },
    connections: { type: "string", default: "1" },
    credit: { type: "string", default: "200" },
    concurrency: { type: "string", default: "50" },
    queue: { type: "string", default: "default" },
    "max-seconds": { type: "string", default: "3600" },
  },
});
const mode = positionals[0];
const jobs = Number(opt.jobs);
const connections = Number(opt.connections);
const maxSeconds = Number(opt["max-seconds"]);
const PAD = "x".repeat(80);
const now = () => Number(process.hrtime.bigint()) / 1e9;
const args = (i) => [PAD, i, now()];

// -- procession: one connection speaking the line protocol

class Connection {
  constructor(socket) {
    this.socket = socket;
    this.buffer = "";
    this.waiting = []; // resolvers of replies, in order
    this.onJob = null;
    socket.setNoDelay(true);
    socket.setEncoding("utf8");
    socket.on("data", (data) => this.received(data));
    socket.on("error", (e) => fail(`connection: ${e.message}`));
  }

  static open(port, name) {
    return new Promise((resolve, reject) => {
      const socket = net.createConnection({ host: "127.0.0.1", port });
      socket.once("error", reject);
      const conn = new Connection(socket);
      // HI first, then HELLO's reply
      conn.waiting.push((hi) => {
        if (!hi.startsWith("HI ")) reject(new Error(`expected HI, got ${hi}`));
        conn.request(`HELLO {"worker":"${name}"}`).then((ok) => {
          if (!ok.startsWith("OK")) reject(new Error(`HELLO: ${ok}`));
          else resolve(conn);
        });
      });
    });
  }

  received(data) {
    this.buffer += data;
    let end;
    // what the frames of one read make us write (the drain's ACKs) goes
    // out in one write, as bench/rawworker.py does
    this.socket.cork();
    while ((end = this.buffer.indexOf("\n")) >= 0) {
      const line = this.buffer.slice(0, end);
      this.buffer = this.buffer.slice(end + 1);
      if (line.startsWith("JOB ") && this.onJob) this.onJob(line);
      else if (line.startsWith("QUIET")) continue;
      else this.waiting.shift()(line);
    }
    this.socket.uncork();
  }

  request(line) {
    return new Promise((resolve) => {
      this.waiting.push(resolve);
      this.socket.write(line + "\n");
    });
  }
}

async function processionPush() {
  const queue = opt.queue === "default" ? "" : `,"queue":${JSON.stringify(opt.queue)}`;
  const conns = await Promise.all(
    Array.from({ length: connections }, (_, i) => Connection.open(Number(opt.target), `node-push-${i}`)),
  );
  const push = async (conn, i) => {
    const reply = await conn.request(`PUSH {"type":"noop","args":${JSON.stringify(args(i))}${queue}}`);
    if (!reply.startsWith("OK")) fail(`push refused: ${reply}`);
  };
  const result = await producers(conns, push);
  for (const c of conns) c.socket.end();
  return result;
}

async function processionDrain() {
  const conn = await Connection.open(Number(opt.target), "node-drain");
  let acked = 0;
  let start = null;
  let finished;
  const done = new Promise((resolve) => (finished = resolve));
  conn.onJob = (line) => {
    if (start === null) start = now();
    // the id is the first field of the frame the server wrote
    const id = line.startsWith('JOB {"id":"') ? line.slice(11, line.indexOf('"', 11)) : null;
    const frame = id !== null && !id.includes("\\") ? `{"id":"${id}"}` : JSON.stringify({ id: JSON.parse(line.slice(4)).id });
    conn.request(`ACK ${frame}`).then((reply) => {
      if (!reply.startsWith("OK")) fail(`ack refused: ${reply}`);
      acked += 1;
      if (acked === jobs) finished(now());
      if (acked >= jobs) acked = jobs;
    });
  };
  const ready = await conn.request(`READY {"queues":[${JSON.stringify(opt.queue)}],"credit":${Number(opt.credit)}}`);
  if (!ready.startsWith("OK")) fail(`READY: ${ready}`);
  const end = await done;
  conn.socket.end();
  return { jobs: acked, start, end, seconds: end - start };
}

// -- BullMQ

// A new ioredis client (BullMQ 6 takes ioredis as a peer): --target is a
// unix socket path, or host:port.
async function redisConnection() {
  const { Redis } = await import("ioredis");
  const target = opt.target;
  if (target.startsWith("/")) return new Redis({ path: target, maxRetriesPerRequest: null });
  const [host, port] = target.split(":");
  return new Redis({ host, port: Number(port), maxRetriesPerRequest: null });
}

async function bullmqPush() {
  const { Queue } = await import("bullmq");
  // one Queue each, so each producer has its own Redis connection
  const queues = [];
  for (let i = 0; i < connections; i++) queues.push(new Queue(opt.queue, { connection: await redisConnection() }));
  await Promise.all(queues.map((q) => q.waitUntilReady()));
  const result = await producers(queues, (q, i) => q.add("noop", { args: args(i) }));
  await Promise.all(queues.map((q) => q.close()));
  for (const q of queues) q.opts.connection.disconnect();
  return result;
}

async function bullmqFill() {
  const { Queue } = await import("bullmq");
  const connection = await redisConnection();
  const queue = new Queue(opt.queue, { connection });
  const start = now();
  for (let i = 0; i < jobs; i += 1000) {
    const chunk = [];
    for (let j = i; j < Math.min(jobs, i + 1000); j++) chunk.push({ name: "noop", data: { args: args(j) } });
    await queue.addBulk(chunk);
  }
  const end = now();
  await queue.close();
  connection.disconnect();
  return { jobs, start, end, seconds: end - start };
}

async function bullmqDrain() {
  const { Worker } = await import("bullmq");
  let completed = 0;
  let start = null;
  let finished;
  const done = new Promise((resolve) => (finished = resolve));
  const worker = new Worker(
    opt.queue,
    async () => {
      if (start === null) start = now();
    },
    { connection: await redisConnection(), concurrency: Number(opt.concurrency) },
  );
  worker.on("completed", () => {
    completed += 1;
    if (completed === jobs) finished(now());
  });
  worker.on("failed", (job, e) => fail(`job failed: ${e && e.message}`));
  worker.on("error", (e) => fail(`worker: ${e.message}`));
  const end = await done;
  await worker.close();
  return { jobs: completed, start, end, seconds: end - start };
}

// -- shared

// Each of `clients` pushes one job at a time until `jobs` are pushed or
// the time is up.
async function producers(clients, push) {
  let next = 0;
  const start = now();
  const deadline = start + maxSeconds;
  let pushed = 0;
  await Promise.all(
    clients.map(async (client) => {
      while (next < jobs) {
        const i = next++;
        if (i % 100 === 0 && now() > deadline) {
          next = jobs;
          break;
        }
        await push(client, i);
        pushed += 1;
      }
    }),
  );
  const end = now();
  return { jobs: pushed, start, end, seconds: end - start };
}

function fail(message) {
  console.error(message);
  process.exit(1);
}

const modes = {
  "procession push": processionPush,
  "procession drain": processionDrain,
  "bullmq push": bullmqPush,
  "bullmq drain": bullmqDrain,
  "bullmq fill": bullmqFill,
};
const run = modes[`${opt.system} ${mode}`];
if (!run) fail(`unknown system and mode: ${opt.system} ${mode}`);
run().then(
  (result) => {
    console.log(JSON.stringify(result));
    process.exit(0);
  },
  (e) => fail(e && e.stack ? e.stack : String(e)),
);
