// A proxy's whole conversation with aceorch: select an engine, report the stream, report its end.
// npm install @nats-io/transport-node @nats-io/jetstream; NATS_URL=nats://localhost:4222 node proxy.mjs [CONTENT_ID]
import { connect } from "@nats-io/transport-node";
import { jetstream } from "@nats-io/jetstream";

const contentId = process.argv[2] ?? "94c2fd8fb9bc8f2fc71a2cbe9d4b866f227a0209";
const nc = await connect({ servers: process.env.NATS_URL ?? "nats://localhost:4222" });
const js = jetstream(nc);

// 1. engine.select reserves a slot on the best engine (an error reply carries Nats-Service-Error-Code).
const selected = await nc.request("engine.select",
  JSON.stringify({ content_key: contentId, key_type: "content_id", client: "js-example" }), { timeout: 5000 });
if (selected.headers?.get("Nats-Service-Error-Code")) throw new Error(`engine.select: ${selected.string()}`);
const { engine, reservation_id } = selected.json();

// 2. Open a playback session on that engine (its own HTTP API).
const pid = crypto.randomUUID();
const opened = await fetch(`http://${engine.host}:${engine.port}/ace/getstream?format=json&id=${contentId}&pid=${pid}`);
const { response: session, error } = await opened.json();
if (!session) throw new Error(`getstream: ${error}`); // the reservation lapses by itself

// 3. stream.started through JetStream: Nats-Msg-Id (msgID) makes a retried publish land once.
const streamId = `js-${pid}`;
await js.publish("stream.started", JSON.stringify({
  stream_id: streamId, container_id: engine.container_id, reservation_id, content_key: contentId,
  key_type: "content_id", playback_session_id: session.playback_session_id, stat_url: session.stat_url,
  command_url: session.command_url, is_live: session.is_live === 1, started_at: new Date().toISOString(),
}), { msgID: `stream.started.${streamId}` });

// ... here a real proxy relays session.playback_url to its viewers ...

// 4. The last viewer left: stop the session, then stream.ended.
await fetch(`${session.command_url}?method=stop`);
await js.publish("stream.ended", JSON.stringify({
  stream_id: streamId, container_id: engine.container_id, reason: "viewers_left", ended_at: new Date().toISOString(),
}), { msgID: `stream.ended.${streamId}` });
console.log(streamId);
await nc.drain();
