#!/usr/bin/env python3
"""Baseline for `dispatcher upload`: a plain copy of a file through RabbitMQ with pika, at the same
chunk size and with the same pattern (WINDOW chunks in flight, default 1, each published
persistent with confirms to a quorum queue, its consumer writing it and answering through direct
reply-to; a chunk goes once fewer than WINDOW are unanswered). No retries, no resume, no digest:
what the broker round trips cost alone.

    python3 transfer_baseline.py AMQP_URL FILE [CHUNK_BYTES [WINDOW]]

Run it against a private broker, never a shared one. Prints MiB/s.
"""
import os
import sys
import threading
import time
import uuid

import pika

url, path = sys.argv[1], sys.argv[2]
chunk_bytes = int(sys.argv[3]) if len(sys.argv) > 3 else 1024 * 1024
window = int(sys.argv[4]) if len(sys.argv) > 4 else 1
queue = "baseline." + uuid.uuid4().hex[:12]
out_path = path + ".baseline-copy"


def serve(ready, done):
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
    channel.basic_qos(prefetch_count=window)
    out = open(out_path, "wb")

    def on_chunk(ch, method, props, body):
        out.write(body)
        ch.basic_publish("", props.reply_to, b"ok", pika.BasicProperties(correlation_id=props.correlation_id))
        ch.basic_ack(method.delivery_tag)
        if props.headers and props.headers.get("last"):
            out.close()
            ch.stop_consuming()

    channel.basic_consume(queue, on_chunk)
    ready.set()
    channel.start_consuming()
    channel.queue_delete(queue)
    connection.close()
    done.set()


ready, done = threading.Event(), threading.Event()
threading.Thread(target=serve, args=(ready, done), daemon=True).start()
ready.wait()
connection = pika.BlockingConnection(pika.URLParameters(url))
channel = connection.channel()
channel.confirm_delivery()
replies = []
channel.basic_consume("amq.rabbitmq.reply-to", lambda ch, m, p, b: replies.append(b), auto_ack=True)
size = os.path.getsize(path)
started = time.monotonic()
with open(path, "rb") as source:
    sent = 0
    while True:
        data = source.read(chunk_bytes)
        last = sent + len(data) >= size
        props = pika.BasicProperties(
            delivery_mode=2, reply_to="amq.rabbitmq.reply-to", correlation_id=str(sent), headers={"last": last}
        )
        channel.basic_publish("", queue, data, props, mandatory=True)
        sent += len(data)
        chunks = (sent + chunk_bytes - 1) // chunk_bytes
        while chunks - len(replies) >= (1 if last else window):
            connection.process_data_events(time_limit=1)
        if last:
            break
done.wait()
elapsed = time.monotonic() - started
connection.close()
os.remove(out_path)
print(
    f"{size / 1048576:.0f} MiB in {elapsed:.1f}s: {size / 1048576 / elapsed:.1f} MiB/s "
    f"({chunk_bytes} byte chunks, {window} in flight)"
)
