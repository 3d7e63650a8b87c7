// A minimal procession client for Node.js, standard library only (net).
// It speaks the line protocol of docs/protocol.rst: one frame per line,
// replies in request order, JOB, QUIET and CANCEL frames at any time.
'use strict';

const net = require('net');
const crypto = require('crypto');

class Connection {
  constructor({ host = '127.0.0.1', port = 7000, token, worker = 'node' } = {}) {
    this.host = host;
    this.port = port;
    this.token = token;
    this.worker = worker;
    this.pending = [];      // callbacks for replies, in request order
    this.buffer = '';
    this.onJob = () => {};
    this.onQuiet = () => {};
    this.onCancel = () => {};
    this.onClose = () => {};
  }

  // Connect, wait for HI, send HELLO. Resolves with the HI body.
  connect() {
    return new Promise((resolve, reject) => {
      this.socket = net.createConnection({ host: this.host, port: this.port });
      this.socket.setEncoding('utf8');
      this.socket.setNoDelay(true);
      let greeted = false;
      this.socket.on('error', (err) => { if (!greeted) reject(err); });
      this.socket.on('close', () => {
        const pending = this.pending;
        this.pending = [];
        for (const p of pending) p.reject(new Error('connection closed'));
        this.onClose();
      });
      this.socket.on('data', (chunk) => {
        this.buffer += chunk;
        let nl;
        while ((nl = this.buffer.indexOf('\n')) >= 0) {
          const line = this.buffer.slice(0, nl).replace(/\r$/, '');
          this.buffer = this.buffer.slice(nl + 1);
          const space = line.indexOf(' ');
          const verb = space < 0 ? line : line.slice(0, space);
          const body = space < 0 ? null : JSON.parse(line.slice(space + 1));
          if (verb === 'HI') {
            greeted = true;
            // cancel: this client understands CANCEL frames.
            const hello = { worker: this.worker, cancel: true };
            if (this.token) hello.token = this.token;
            this.request('HELLO', hello).then(() => resolve(body), reject);
          } else if (verb === 'JOB') {
            this.onJob(body);
          } else if (verb === 'QUIET') {
            this.onQuiet();
          } else if (verb === 'CANCEL') {
            this.onCancel(body);
          } else {
            const p = this.pending.shift();
            if (!p) continue;
            if (verb === 'OK') p.resolve(body);
            else {
              const err = new Error(`${body.code}: ${body.message}`);
              err.code = body.code;
              err.details = body;
              p.reject(err);
            }
          }
        }
      });
    });
  }

  // Send one request; resolves with the OK body, rejects on ERR.
  request(verb, body) {
    return new Promise((resolve, reject) => {
      this.pending.push({ resolve, reject });
      const frame = body === undefined ? verb : `${verb} ${JSON.stringify(body)}`;
      this.socket.write(frame + '\n');
    });
  }

  // Push a job. The client picks the id, so a resend after an error is safe.
  push(job) {
    return this.request('PUSH', { id: crypto.randomBytes(12).toString('hex'), ...job });
  }

  close() {
    return this.request('BYE').catch(() => {}).then(() => this.socket.end());
  }
}

module.exports = { Connection };
