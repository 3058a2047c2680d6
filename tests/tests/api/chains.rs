//! `job.put` refuses an `on_success` cycle through the stored jobs, naming
//! it; chains, diamonds and children not stored yet are fine.

use super::*;

fn chained(id: &str, children: &[&str]) -> String {
    json!({"id": id, "schedule": "@yearly", "run": {"shell": "true"}, "on_success": children})
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_refuses_an_on_success_cycle_naming_it_and_writes_nothing() {
    harness::init_tracing();
    let server = NatsServer::start().await;
    let client = server.client().await;
    let a = Scheduler::start(&server.url(), "a");
    let api = harness::api(&client, &names()).await;
    let put = async |body: String| api.put_raw(body.into()).await;
    let jobs_stream = format!("KV_{}", names().jobs_bucket());

    // Two jobs: `b` does not exist when `a` names it.
    put(chained("a", &["b"])).await.unwrap();
    let before = last_seq(&client, &jobs_stream).await;
    let m = refused(&client, "job.put", &chained("b", &["a"]), "bad_request", "").await;
    assert_eq!(m, "on_success: a cycle: b -> a -> b");
    // Through a compare-and-set put too.
    let mut body: Value = serde_json::from_str(&chained("b", &["x", "a"])).unwrap();
    body["expected_revision"] = json!(0);
    let m = refused(&client, "job.put", &body.to_string(), "bad_request", "").await;
    assert_eq!(m, "on_success: a cycle: b -> a -> b");
    assert_eq!(last_seq(&client, &jobs_stream).await, before);
    assert_eq!(
        api_error(api.get("b").await).0,
        ErrorCode::NotFound,
        "nothing stored"
    );

    // Three jobs, the last closing it; a paused job's children count.
    put(chained("c1", &["c2"])).await.unwrap();
    put(chained("c2", &["c3"])).await.unwrap();
    api.pause("c2").await.unwrap();
    let before = last_seq(&client, &jobs_stream).await;
    let (code, m) = api_error(put(chained("c3", &["other", "c1"])).await);
    assert_eq!(code, ErrorCode::BadRequest);
    assert_eq!(m, "on_success: a cycle: c3 -> c1 -> c2 -> c3");
    // An edit of a stored job can close one as well.
    put(chained("c3", &[])).await.unwrap();
    let (code, m) = api_error(put(chained("c2", &["c3", "c1"])).await);
    assert_eq!(code, ErrorCode::BadRequest);
    assert_eq!(m, "on_success: a cycle: c2 -> c1 -> c2");
    assert_eq!(last_seq(&client, &jobs_stream).await, before + 1);

    // A chain and a diamond are fine, whatever order they come in.
    put(chained("d4", &[])).await.unwrap();
    put(chained("d1", &["d2", "d3"])).await.unwrap();
    put(chained("d2", &["d4"])).await.unwrap();
    put(chained("d3", &["d4", "c1"])).await.unwrap();
    let reply = put(chained("b", &["d1"])).await.unwrap();
    assert_eq!(reply.job.on_success, ["d1"]);
    assert!(reply.created);
    // An invalid stored definition has no children.
    harness::kv_put(
        &client,
        &names(),
        "broken",
        br#"{"id":"broken","on_success":["e"]}"#,
    )
    .await;
    put(chained("e", &["broken"])).await.unwrap();
    // Once `a` no longer names `b`, `b -> a` is fine.
    put(chained("a", &[])).await.unwrap();
    put(chained("b", &["a", "d1"])).await.unwrap();
    assert_eq!(
        api.get("b").await.unwrap().job.unwrap().on_success,
        ["a", "d1"]
    );
    a.stop().await;
}
