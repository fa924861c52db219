// The Node comparison: bbc/sqs-consumer in its best documented configuration for throughput,
// run as a subprocess by bench/consumers.py. P consumers (one long poll each, like the worker's pollers),
// batchSize 10 and handleMessageBatch, so each receive is acknowledged with one DeleteMessageBatch;
// the handler runs on every message of the batch at once. Configured by BENCH_* and AWS_* variables;
// prints "ready" once started and, on SIGTERM, one JSON line with the number of messages it handled.
import { appendFileSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";
import { SQSClient } from "@aws-sdk/client-sqs";
import { Consumer } from "sqs-consumer";

const env = process.env;
const queueUrl = env.BENCH_QUEUE_URL;
const pollers = Number(env.BENCH_POLLERS ?? "2");
const waitTimeSeconds = Number(env.BENCH_WAIT_SECONDS ?? "5");
const visibilityTimeout = Number(env.BENCH_VISIBILITY_SECONDS ?? "60");
const handlerName = env.BENCH_HANDLER ?? "noop";
const latencyFile = env.BENCH_LATENCY_FILE;

let handled = 0;

const handlers = {
  noop: async () => {},
  sleep50: async () => {
    await sleep(50);
  },
  latency: async (message) => {
    const started = (performance.timeOrigin + performance.now()) / 1000;
    const sent = Number(JSON.parse(message.Body).t);
    appendFileSync(latencyFile, `${(started - sent).toFixed(6)} ${message.MessageId}\n`);
  },
};
const handle = handlers[handlerName];
if (!handle) {
  console.error(`unknown handler ${handlerName}`);
  process.exit(2);
}

const sqs = new SQSClient({
  endpoint: env.AWS_ENDPOINT_URL,
  region: env.AWS_DEFAULT_REGION ?? "us-east-1",
});

const consumers = [];
for (let i = 0; i < pollers; i++) {
  const consumer = Consumer.create({
    queueUrl,
    sqs,
    batchSize: 10,
    waitTimeSeconds,
    visibilityTimeout,
    handleMessageBatch: async (messages) => {
      await Promise.all(messages.map((message) => handle(message)));
      handled += messages.length;
      return messages;
    },
  });
  consumer.on("error", (err) => console.error(`error: ${err.message}`));
  consumer.on("processing_error", (err) => console.error(`processing_error: ${err.message}`));
  consumers.push(consumer);
}

process.on("SIGTERM", () => {
  for (const consumer of consumers) consumer.stop();
  console.log(JSON.stringify({ handled }));
  process.exit(0);
});

for (const consumer of consumers) consumer.start();
console.log("ready");
