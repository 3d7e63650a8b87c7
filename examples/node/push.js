#!/usr/bin/env node
// Push jobs to procession from Node.js, standard library only.
//
//   node push.js TYPE [ARGS_JSON] [--queue q] [--count n]
//
// Prints one job id per line. PROCESSION_HOST, PROCESSION_PORT and
// PROCESSION_TOKEN say where the server is.
'use strict';

const { Connection } = require('./procession');

function option(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : fallback;
}

async function main() {
  const [type, argsText] = process.argv.slice(2).filter((a, i, all) => !a.startsWith('--') && !(all[i - 1] || '').startsWith('--'));
  if (!type) {
    console.error('usage: node push.js TYPE [ARGS_JSON] [--queue q] [--count n]');
    process.exit(2);
  }
  const conn = new Connection({
    host: process.env.PROCESSION_HOST || '127.0.0.1',
    port: parseInt(process.env.PROCESSION_PORT || '7000', 10),
    token: process.env.PROCESSION_TOKEN,
    worker: `node-push-${process.pid}`,
  });
  await conn.connect();
  const count = parseInt(option('count', '1'), 10);
  const job = { type, args: argsText ? JSON.parse(argsText) : [], queue: option('queue', 'default') };
  // Pipelined: all pushes are written at once, replies come back in order.
  const replies = await Promise.all(Array.from({ length: count }, () => conn.push(job)));
  for (const reply of replies) console.log(reply.id);
  await conn.close();
}

main().catch((err) => {
  console.error(`push failed: ${err.message}`);
  process.exit(1);
});
