//! Discovery, agent cards, mailbox and whoami (spec §8.5, §14) over real sockets.

use crate::common;

use common::*;
use reqwest::Client;
use serde_json::{Value, json};

async fn get(c: &Client, url: String, token: &str) -> reqwest::Response {
    c.get(url).bearer_auth(token).send().await.unwrap()
}

async fn post(c: &Client, url: String, token: &str, body: &str) -> reqwest::Response {
    c.post(url)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn cards_upsert_and_discovery() {
    let mock = start().await;
    let state = mock.state();
    let me = state.add_sandbox("my box", "claudecode");
    let far = state.add_sandbox_in("ws-2", "far", "claudecode");
    let c = client();
    let url = format!("{}/api/agent/discovery/cards", mock.url());

    // The v0.35 default card, sent with the tunnel token.
    let card = json!({
        "display_name": "Claude box",
        "description": "Claude Code agent with full coding, terminal, and search capabilities",
        "agent_type": "claudecode",
        "card": {"skills": [{"name": "code-editing", "description": "Read, write, and edit source code"}], "tags": ["code"]},
    });
    let resp = post(&c, url.clone(), &me.tunnel_token, &card.to_string()).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap(), json!({"status": "ok"}));
    let stored = state.agent_card(&me.id).unwrap();
    assert_eq!(stored.display_name, "Claude box");
    assert_eq!(stored.version, 1);
    assert_eq!(stored.status, "available");

    // Upsert again: version bumps, missing fields keep their values.
    let resp = post(&c, url.clone(), &me.proxy_token, r#"{"description":"new"}"#).await;
    assert_eq!(resp.status(), 200);
    let stored = state.agent_card(&me.id).unwrap();
    assert_eq!((stored.version, stored.description.as_str()), (2, "new"));
    assert_eq!(stored.display_name, "Claude box");

    // Defaults for a first card without fields.
    let other = state.add_sandbox("other", "opencode");
    assert_eq!(
        post(&c, url.clone(), &other.proxy_token, "{}")
            .await
            .status(),
        200
    );
    let stored = state.agent_card(&other.id).unwrap();
    assert_eq!(stored.display_name, "other");
    assert_eq!(stored.agent_type, "claudecode");
    assert_eq!(stored.card, json!({}));

    // A card in another workspace is not discovered.
    assert_eq!(
        post(&c, url.clone(), &far.proxy_token, "{}").await.status(),
        200
    );

    let resp = get(
        &c,
        format!("{}/api/agent/discovery/agents", mock.url()),
        &me.proxy_token,
    )
    .await;
    assert_eq!(resp.status(), 200);
    let agents: Vec<Value> = resp.json().await.unwrap();
    assert_eq!(agents.len(), 2);
    let mine = agents
        .iter()
        .find(|a| a["agent_id"] == me.id.as_str())
        .unwrap();
    assert_eq!(mine["display_name"], "Claude box");
    assert_eq!(mine["description"], "new");
    assert_eq!(mine["agent_type"], "claudecode");
    assert_eq!(mine["status"], "available");
    assert_eq!(mine["version"], 2);
    assert_eq!(mine["card"]["tags"], json!(["code"]));

    // Errors.
    assert_text_error(
        post(&c, url.clone(), &me.proxy_token, "x").await,
        400,
        "bad request",
    )
    .await;
    assert_text_error(
        post(&c, url.clone(), "bad", "{}").await,
        401,
        "unauthorized",
    )
    .await;
    let resp = c
        .get(format!("{}/api/agent/discovery/agents", mock.url()))
        .send()
        .await
        .unwrap();
    assert_text_error(resp, 401, "missing authorization").await;
}

#[tokio::test]
async fn agent_info_capabilities_derive_a_card() {
    let mock = start().await;
    let state = mock.state();
    let sb = state.add_sandbox("gpu box", "claudecode");
    state.record_agent_info(
        &sb.id,
        json!({
            "hostname": "h",
            "capabilities": {
                "languages": [{"name": "python3", "version": "3.12.1"}],
                "tools": [{"name": "git", "version": "2.43.0"}],
                "gpu": {"name": "H100", "memory_mb": 81559},
                "probed_at": "2026-01-01T00:00:00Z"
            }
        }),
    );
    assert_eq!(
        state.sandbox(&sb.id).unwrap().agent_info.unwrap()["hostname"],
        "h"
    );
    let card = state.agent_card(&sb.id).unwrap();
    assert_eq!(card.display_name, "gpu box");
    let tags = card.card["tags"].as_array().unwrap();
    for t in ["python", "git", "gpu"] {
        assert!(tags.contains(&json!(t)), "{tags:?}");
    }
    let agents: Vec<Value> = get(
        &client(),
        format!("{}/api/agent/discovery/agents", mock.url()),
        &sb.proxy_token,
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(agents.len(), 1);
}

#[tokio::test]
async fn mailbox_send_and_inbox() {
    let mock = start().await;
    let state = mock.state();
    let a = state.add_sandbox("a", "claudecode");
    let b = state.add_sandbox("b", "claudecode");
    let far = state.add_sandbox_in("ws-2", "far", "claudecode");
    let c = client();
    let send = format!("{}/api/agent/mailbox/send", mock.url());
    let inbox = format!("{}/api/agent/mailbox/inbox", mock.url());

    for i in 0..12 {
        let body = json!({"to": b.id, "text": format!("m{i}")}).to_string();
        let resp = post(&c, send.clone(), &a.tunnel_token, &body).await;
        assert_eq!(resp.status(), 201);
        let r: Value = resp.json().await.unwrap();
        assert!(!r["message_id"].as_str().unwrap().is_empty());
        assert_eq!(r["status"], "sent");
    }
    let resp = post(
        &c,
        send.clone(),
        &a.proxy_token,
        &json!({"to": b.id, "text": "q", "msg_type": "question"}).to_string(),
    )
    .await;
    assert_eq!(resp.status(), 201);

    // Default limit 10, oldest first, marked read.
    let msgs: Vec<Value> = get(&c, inbox.clone(), &b.proxy_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(msgs.len(), 10);
    assert_eq!(msgs[0]["text"], "m0");
    assert_eq!(msgs[0]["from"], a.id.as_str());
    assert_eq!(msgs[0]["msg_type"], "text");
    assert!(msgs[0]["id"].is_string() && msgs[0]["created_at"].is_string());
    let msgs: Vec<Value> = get(&c, format!("{inbox}?limit=2"), &b.proxy_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(msgs.len(), 2);
    let msgs: Vec<Value> = get(&c, inbox.clone(), &b.proxy_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0]["msg_type"], "question");
    let msgs: Vec<Value> = get(&c, inbox.clone(), &b.proxy_token)
        .await
        .json()
        .await
        .unwrap();
    assert!(msgs.is_empty());
    assert_eq!(state.inbox_of(&b.id).len(), 13);
    assert!(state.mailbox().iter().all(|m| m.read));

    // Helper-sent mail shows up too.
    state.send_mail(&b.id, &a.id, "hi a", "");
    let msgs: Vec<Value> = get(&c, inbox.clone(), &a.proxy_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(msgs[0]["text"], "hi a");

    // Errors.
    assert_text_error(
        post(&c, send.clone(), &a.proxy_token, "{").await,
        400,
        "bad request",
    )
    .await;
    assert_text_error(
        post(
            &c,
            send.clone(),
            &a.proxy_token,
            &json!({"to": b.id}).to_string(),
        )
        .await,
        400,
        "to and text required",
    )
    .await;
    assert_text_error(
        post(
            &c,
            send.clone(),
            &a.proxy_token,
            &json!({"to": "nobody", "text": "x"}).to_string(),
        )
        .await,
        404,
        "target agent not found",
    )
    .await;
    assert_text_error(
        post(
            &c,
            send.clone(),
            &a.proxy_token,
            &json!({"to": far.id, "text": "x"}).to_string(),
        )
        .await,
        403,
        "target agent not in workspace",
    )
    .await;
    assert_text_error(get(&c, inbox.clone(), "bad").await, 401, "unauthorized").await;
}

#[tokio::test]
async fn whoami_takes_proxy_tokens_only() {
    let mock = start().await;
    let state = mock.state();
    let c = client();
    let tok = login(&c, &mock.url()).await;
    let reg: Value = register_raw(
        &c,
        &mock.url(),
        tok["access_token"].as_str().unwrap(),
        r#"{"name":"me","type":"claudecode"}"#,
    )
    .await
    .json()
    .await
    .unwrap();
    let url = format!("{}/api/agent/whoami", mock.url());
    let resp = get(&c, url.clone(), reg["proxy_token"].as_str().unwrap()).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let me: Value = resp.json().await.unwrap();
    assert_eq!(me["sandbox_id"], reg["sandbox_id"]);
    assert_eq!(me["short_id"], reg["short_id"]);
    assert_eq!(me["workspace_id"], reg["workspace_id"]);
    assert_eq!(me["user_id"], state.default_user_id().as_str());
    assert_eq!(me["role"], "owner");
    assert_eq!(me["display_name"], "me");
    assert!(me["workspace_name"].is_string());

    assert_text_error(
        get(&c, url.clone(), reg["tunnel_token"].as_str().unwrap()).await,
        401,
        "unauthorized",
    )
    .await;
    assert_text_error(c.get(&url).send().await.unwrap(), 401, "unauthorized").await;
    assert_text_error(get(&c, url.clone(), "bad").await, 401, "unauthorized").await;
    state.set_sandbox_role(reg["sandbox_id"].as_str().unwrap(), "");
    assert_text_error(
        get(&c, url.clone(), reg["proxy_token"].as_str().unwrap()).await,
        403,
        "forbidden",
    )
    .await;
}
