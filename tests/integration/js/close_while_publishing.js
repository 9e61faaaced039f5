// A Node.js client (amqplib) that publishes a burst and closes at once, while its frames
// are still being written. It must see no error (ECONNRESET, EPIPE, ...): the broker reads
// what the client sent up to connection.close, answers close-ok and lets the client close.
// Usage: node close_while_publishing.js URL QUEUE COUNT SIZE ROUNDS; prints "ok N" on success.
"use strict";
const amqp = require("amqplib");

const [url, queue, count, size, rounds] = process.argv.slice(2);
const errors = [];

async function round() {
  const conn = await amqp.connect(url);
  conn.on("error", (e) => errors.push(`connection error: ${e.message}`));
  const ch = await conn.createChannel();
  ch.on("error", (e) => errors.push(`channel error: ${e.message}`));
  await ch.assertQueue(queue, { durable: false });
  const body = Buffer.alloc(Number(size), 120);
  for (let i = 0; i < Number(count); i++) {
    ch.sendToQueue(queue, body);  // buffered by the client: not waiting for the socket
  }
  await conn.close();  // while most of the publishes are still on their way
}

(async () => {
  const timer = setTimeout(() => { console.error("timed out"); process.exit(2); }, 20000);
  for (let r = 0; r < Number(rounds); r++) {
    await round();
  }
  clearTimeout(timer);
  if (errors.length) {
    console.error(errors.join("\n"));
    process.exit(1);
  }
  console.log(`ok ${rounds}`);
})().catch((e) => { console.error(`error: ${e.stack || e}`); process.exit(1); });
