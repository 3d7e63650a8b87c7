#!/usr/bin/env node
// A complete procession worker in Node.js with only the standard library.
//
//   node worker.js [--queues high,default] [--concurrency 4]
//
// PROCESSION_HOST, PROCESSION_PORT and PROCESSION_TOKEN say where the server
// is; MAX_JOBS stops the worker after that many jobs (for tests). It
// reconnects with backoff when the server goes away, and on QUIET (the
// server is stopping) it finishes what it holds, says BYE and reconnects.
'use strict';

const { Connection } = require('./procession');

// The handlers, by job type. A handler may return a value or a promise;
// throwing fails the attempt (and the server retries it with backoff).
const handlers = {
  echo: async (args) => args,
  add: async (args) => args.reduce((a, b) => a + b, 0),
  sleep: async (args) => new Promise((r) => setTimeout(() => r('slept'), args[0] * 1000)),
  fail: async () => { throw new Error('this job always fails'); },
};

function option(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : fallback;
}

const queues = option('queues', 'default').split(',');
const concurrency = parseInt(option('concurrency', '4'), 10);
const maxJobs = process.env.MAX_JOBS ? parseInt(process.env.MAX_JOBS, 10) : Infinity;
let done = 0;
let stopping = false;

async function runJob(conn, job) {
  const handler = handlers[job.type];
  try {
    if (!handler) throw new Error(`no handler for job type ${job.type}`);
    // Keep the lease for long jobs: extend at half the timeout.
    const timer = setInterval(() => {
      conn.request('EXTEND', { id: job.id, seconds: job.timeout }).catch(() => {});
    }, (job.timeout * 1000) / 2);
    let result;
    try {
      result = await handler(job.args);
    } finally {
      clearInterval(timer);
    }
    await conn.request('ACK', { id: job.id, result: result === undefined ? null : result });
    console.log(`acked ${job.id} ${job.type}`);
  } catch (err) {
    if (err.code === 'lease_lost' || err.code === 'not_held') return;
    if (err.message === 'connection closed') return;
    await conn.request('FAIL', {
      id: job.id,
      error: { type: err.name, message: err.message, backtrace: (err.stack || '').split('\n') },
    }).catch(() => {});
    console.log(`failed ${job.id} ${job.type}: ${err.message}`);
  }
  done += 1;
  if (done >= maxJobs && !stopping) {
    stopping = true;
    await conn.close();
    process.exit(0);
  }
}

async function session() {
  const conn = new Connection({
    host: process.env.PROCESSION_HOST || '127.0.0.1',
    port: parseInt(process.env.PROCESSION_PORT || '7000', 10),
    token: process.env.PROCESSION_TOKEN,
    worker: `node-${process.pid}`,
  });
  const inHand = new Set();
  const closed = new Promise((resolve) => { conn.onClose = resolve; });
  conn.onJob = (job) => {
    const running = runJob(conn, job).finally(() => inHand.delete(running));
    inHand.add(running);
  };
  conn.onQuiet = async () => {
    await Promise.all([...inHand]);
    await conn.close();
  };
  await conn.connect();
  await conn.request('READY', { queues, credit: concurrency });
  console.log(`ready on ${queues.join(',')} with credit ${concurrency}`);
  await closed;
}

async function main() {
  let delay = 100;
  for (;;) {
    try {
      await session();
      delay = 100;
    } catch (err) {
      console.error(`connection failed: ${err.message}`);
    }
    if (stopping) return;
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(delay * 2, 5000);
  }
}

process.on('SIGTERM', () => process.exit(0));
main();
