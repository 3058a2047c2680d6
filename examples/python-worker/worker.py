"""A jetcron worker for shell jobs in Python (nats-py): see README.md and docs/work-protocol.md."""
import asyncio, json, os, signal, socket, tempfile, uuid
from asyncio.subprocess import DEVNULL, PIPE, STDOUT
from contextlib import suppress
from datetime import datetime, timedelta, timezone
import nats
from nats.js.api import AckPolicy, ConsumerConfig
P, GROUP = os.environ.get("JETCRON_PREFIX", "jetcron"), os.environ.get("JETCRON_GROUP", "default")
WORKER = os.environ.get("JETCRON_WORKER_ID", f"{socket.gethostname()}-{os.getpid()}")
EPOCH, MS = datetime(1970, 1, 1, tzinfo=timezone.utc), timedelta(milliseconds=1)
now = lambda: datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
ms = lambda instant: (datetime.fromisoformat(instant) - EPOCH) // MS  # Unix ms, as in dedup ids

async def run(s, attempt, run_id):  # runs the shard's command: the result fields it decides
    if "shell" not in s["run"]:  # an HTTP job, say: a failed attempt, retried as its job says
        return dict(status="failed", error=f"{WORKER} runs only shell jobs, not {', '.join(s['run'])}")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_PASSWORD", "NATS_TOKEN",
           "JETCRON_PAYLOAD"))} | {f"JETCRON_{k}": str(v) for k, v in dict(JOB=s["job"],
           INSTANT=s["instant"], SHARD=s["shard"], SHARDS=s["shards"], ATTEMPT=attempt, RUN_ID=run_id,
           SHARD_PARAM=s.get("param") or "", WORKER=WORKER, PARENT_FIRE=s.get("parent")).items()
           if v is not None}
    if s.get("payload") is not None:  # in a file only this user can read; in the env up to 64 KiB
        payload = json.dumps(s["payload"], separators=(",", ":"), ensure_ascii=False)
        with tempfile.NamedTemporaryFile("w", prefix="jetcron-payload-", delete=False) as f:
            f.write(payload)
        env.update({"JETCRON_PAYLOAD_FILE": f.name} | (
            {"JETCRON_PAYLOAD": payload} if len(payload.encode()) <= 65536 else {}))
    proc = await asyncio.create_subprocess_exec("sh", "-c", s["run"]["shell"], env=env,
        stdin=DEVNULL, stdout=PIPE, stderr=STDOUT, start_new_session=True)  # own process group
    out = asyncio.ensure_future(proc.communicate())
    done, _ = await asyncio.wait([out], timeout=s["timeout_ms"] / 1000)
    for sig in () if done else (signal.SIGTERM, signal.SIGKILL):  # to its process group, 5 s apart
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
            await asyncio.wait([out], timeout=5)
    (data, _), code = await out, proc.returncode
    if "JETCRON_PAYLOAD_FILE" in env:
        os.unlink(env["JETCRON_PAYLOAD_FILE"])
    r = dict(output=data[-65536:].decode(errors="replace"), output_truncated=len(data) > 65536)
    if not done:
        return dict(r, status="timed_out", error=f"timed out after {s['timeout_ms']}ms")
    return dict(r, status="succeeded" if code == 0 else "failed", **(
        dict(exit_code=code) if code >= 0 else dict(error=f"killed by signal {-code}")))
async def progress(msg, every):  # +WPI while the shard runs, so that it is not redelivered
    while await asyncio.sleep(every, result=True):
        await msg.in_progress()
async def handle(nc, js, msg, every):
    s = json.loads(msg.data)
    job, instant, shard, retry = s["job"], s["instant"], s["shard"], s["retry"]
    attempt, run_id, started = msg.metadata.num_delivered, uuid.uuid4().hex, now()
    ev, ticker = dict(job=job, instant=instant, shard=shard, run_id=run_id, worker=WORKER), None
    r = dict(ev, shards=s["shards"], attempt=attempt, started_at=started, output="", exit_code=None,
             epoch=s["epoch"], stream_seq=msg.metadata.sequence.stream, parent=s.get("parent"))
    if s.get("expires_at") and ms(started) > ms(s["expires_at"]):  # not run, and never again
        r.update(status="expired", error="not started within its deadline; not run")
        ev.update(kind="expired", attempt=attempt, expires_at=s["expires_at"],
                  late_ms=ms(started) - ms(instant))
    else:
        ticker = asyncio.create_task(progress(msg, every))
        r.update(await run(s, attempt, run_id))
    failed, key = r["status"] in ("failed", "timed_out"), f"{job}:{ms(instant)}:{shard}"
    r.update(finished_at=now(), will_retry=failed and attempt < retry["max_attempts"])
    if failed and not r["will_retry"]:  # its last attempt: a dead letter
        ev.update(kind="dead", attempts=attempt, status=r["status"], error=r.get("error"))
    pub = lambda subject, body, msg_id: js.publish(  # each waits for the stream's ack
        f"{P}.{subject}.{job}", json.dumps(body).encode(), headers={"Nats-Msg-Id": msg_id})
    try:  # the message is settled only once everything is stored
        await pub("results", r, f"{key}:{attempt}:{run_id}")
        if "kind" in ev:
            await pub(f"events.{ev['kind']}", dict(ev, at=now()), f"{ev['kind']}:{key}")
        if s.get("track") and not r["will_retry"]:  # the scheduler waits for this fire's end
            await pub("ends", r, f"end:{key}")
    finally:
        ticker and ticker.cancel()
    backoff = retry["backoff"] or [10000]  # ms before attempt 2, 3, ...; the last one repeats
    nak = b'-NAK {"delay":%d}' % (backoff[min(attempt, len(backoff)) - 1] * 1_000_000)
    ack = nak if r["will_retry"] else b"+ACK" if r["status"] == "succeeded" else b"+TERM"
    await nc.request(msg.reply, ack, timeout=5)
async def pull(nc, js, sub, every):  # one run slot: fetches a shard only when free to run it
    while True:
        try:
            for msg in await sub.fetch(1, timeout=5):
                await handle(nc, js, msg, every)
        except (ValueError, KeyError, TypeError):  # not a shard message: never run it
            await nc.request(msg.reply, b"+TERM", timeout=5)
        except Exception as e:  # none to fetch, or not settled: it comes back after the ack wait
            if not isinstance(e, nats.errors.TimeoutError):
                print(f"{WORKER}: {e!r}", flush=True)
async def main():
    url = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
    nc = await nats.connect(url.split(","), max_reconnect_attempts=-1)  # never gives up
    js, stream, durable = nc.jetstream(), P.upper().replace("-", "_") + "_WORK", f"{P}-{GROUP}"
    config = ConsumerConfig(durable_name=durable, filter_subject=f"{P}.work.{GROUP}.*", ack_wait=15,
                            ack_policy=AckPolicy.EXPLICIT, max_deliver=-1, max_ack_pending=10000)
    subs = [await js.pull_subscribe(config.filter_subject, durable, stream, config)
            for _ in range(int(os.environ.get("JETCRON_CONCURRENCY", "4")))]
    every = (await js.consumer_info(stream, durable)).config.ack_wait / 3
    await asyncio.gather(*(pull(nc, js, sub, every) for sub in subs))
asyncio.run(main())
