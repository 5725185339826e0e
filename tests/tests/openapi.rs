//! Issue: the HTTP API described — `docs/openapi.json` names every route the server has (the
//! router's own table) and nothing else; every example in it validates against its schema; and the
//! live daemon's answers, successes and errors, validate against the schemas it documents for that
//! route and status.

use orchestrator::http;
use orchestrator_tests::client::{Answer, Client};
use orchestrator_tests::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;

const HTTP: &str = "[http]\nlisten = \"127.0.0.1:0\"\n";

fn document() -> Value {
    serde_json::from_str(http::OPENAPI).expect("docs/openapi.json is JSON")
}

/// A validator for `schema` (a schema object that may `$ref` into the document's components).
fn validator(doc: &Value, schema: &Value) -> jsonschema::Validator {
    // The schema is evaluated as part of the whole document, so that `#/components/...` resolves.
    let mut root = doc.clone();
    root["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
    root["allOf"] = json!([schema]);
    jsonschema::options()
        .should_validate_formats(true)
        .build(&root)
        .unwrap_or_else(|e| panic!("schema {schema}: {e}"))
}

fn assert_valid(doc: &Value, schema: &Value, instance: &Value, what: &str) {
    let v = validator(doc, schema);
    let errors: Vec<String> = v.iter_errors(instance).map(|e| e.to_string()).collect();
    assert!(
        errors.is_empty(),
        "{what}: {errors:?}\n{}",
        serde_json::to_string_pretty(instance).unwrap()
    );
}

fn methods() -> [&'static str; 5] {
    ["get", "post", "put", "patch", "delete"]
}

#[test]
fn every_route_the_server_has_is_described_and_nothing_else() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    let served: BTreeSet<(String, String)> = http::routes()
        .into_iter()
        .map(|(m, p)| (m.as_str().to_lowercase(), p.to_string()))
        .collect();
    let described: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            methods()
                .into_iter()
                .filter(|m| ops.get(*m).is_some())
                .map(move |m| (m.to_string(), path.clone()))
        })
        .collect();
    assert_eq!(served, described);
    assert!(served.contains(&("get".into(), "/metrics".into())));
    assert!(served.contains(&("get".into(), "/orchestrator/openapi.json".into())));
}

#[test]
fn every_example_validates_against_its_schema() {
    let doc = document();
    let mut checked = 0;
    for (name, schema) in doc["components"]["schemas"].as_object().unwrap() {
        for example in schema["examples"].as_array().into_iter().flatten() {
            let r = json!({ "$ref": format!("#/components/schemas/{name}") });
            assert_valid(&doc, &r, example, &format!("example of {name}"));
            checked += 1;
        }
    }
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            for (status, response) in op["responses"].as_object().unwrap() {
                for (media, content) in response["content"].as_object().into_iter().flatten() {
                    if let Some(example) = content.get("example") {
                        let what = format!("{method} {path} {status} {media} example");
                        assert_valid(&doc, &content["schema"], example, &what);
                        checked += 1;
                    }
                }
            }
        }
    }
    assert!(checked >= 20, "only {checked} examples");

    // The schemas do refuse what does not match them: a wrong enum value, a wrong time.
    let task = json!({ "$ref": "#/components/schemas/Task" });
    let example = &doc["components"]["schemas"]["Task"]["examples"][0];
    let v = validator(&doc, &task);
    assert!(v.is_valid(example));
    for (key, value) in [("state", "bogus"), ("createdAt", "yesterday")] {
        let mut broken = example.clone();
        broken[key] = json!(value);
        assert!(!v.is_valid(&broken), "{key} = {value} was accepted");
    }
    let mut broken = example.clone();
    broken.as_object_mut().unwrap().remove("goal");
    assert!(!v.is_valid(&broken), "a task without its goal was accepted");
}

/// Check a live answer against what the document says of `method path` and its status.
fn conforms(doc: &Value, method: &str, path: &str, a: &Answer) {
    let op = &doc["paths"][path][method];
    assert!(op.is_object(), "{method} {path} is not described");
    let response = &op["responses"][a.status.to_string()];
    assert!(
        response.is_object(),
        "{method} {path} answered {}, which is not described: {}",
        a.status,
        a.body
    );
    let content = response["content"].as_object().expect("a documented body");
    let (media, described) = content
        .iter()
        .find(|(media, _)| a.content_type.starts_with(media.as_str()))
        .unwrap_or_else(|| {
            panic!(
                "{method} {path} {}: content type {} is not described",
                a.status, a.content_type
            )
        });
    let body = if media == "application/json" {
        a.json()
    } else {
        Value::String(a.body.clone())
    };
    let what = format!("{method} {path} → {}", a.status);
    assert_valid(doc, &described["schema"], &body, &what);
}

#[test]
fn live_answers_validate_against_the_document() {
    let doc = document();
    let d = TestDaemon::with_config(HTTP);
    let c = Client::of(&d);

    // Before `orchctl init`: no token can work yet.
    conforms(
        &doc,
        "get",
        "/orchestrator/health",
        &c.get("/orchestrator/health", None),
    );
    let a = c.get("/orchestrator/tasks", None);
    assert_eq!(a.status, 503);
    conforms(&doc, "get", "/orchestrator/tasks", &a);

    let token = d.init_token();
    let t = Some(token.as_str());
    let served = c.get("/orchestrator/openapi.json", None);
    assert_eq!(served.status, 200);
    assert_eq!(
        served.json(),
        doc,
        "the served document is docs/openapi.json"
    );
    conforms(&doc, "get", "/orchestrator/openapi.json", &served);
    let health = c.get("/orchestrator/health", None);
    assert_eq!(health.json()["hasCredentials"], true);
    conforms(&doc, "get", "/orchestrator/health", &health);
    let metrics = c.get("/metrics", None);
    assert_eq!(metrics.status, 200);
    conforms(&doc, "get", "/metrics", &metrics);

    let preview = "/orchestrator/routing/preview";
    let a = c.get(&format!("{preview}?goal=fix+the+bug&capabilities=code"), t);
    assert_eq!(a.status, 200);
    conforms(&doc, "get", preview, &a);
    let a = c.get(preview, t);
    assert_eq!(a.status, 400);
    conforms(&doc, "get", preview, &a);

    let tasks = "/orchestrator/tasks";
    let submit = |body: &str| c.call("POST", tasks, t, Some(body));
    let a = submit(r#"{"goal": "please debug this function and fix the off-by-one"}"#);
    assert_eq!(a.status, 201);
    conforms(&doc, "post", tasks, &a);
    let held = a.json()["id"].as_str().unwrap().to_string();
    let a = submit(r#"{"goal": "draft an email reply to the procurement team"}"#);
    assert_eq!(a.status, 201);
    conforms(&doc, "post", tasks, &a);
    for bad in [r#"{"goal": ""}"#, r#"{"goal": 3}"#, "[]"] {
        let a = submit(bad);
        assert_eq!(a.status, 400, "{bad}");
        conforms(&doc, "post", tasks, &a);
    }
    let a = c.call(
        "POST",
        tasks,
        t,
        Some(&format!(r#"{{"goal": "{}"}}"#, "x".repeat(20_000))),
    );
    assert_eq!(a.status, 413);
    conforms(&doc, "post", tasks, &a);
    let a = c.call("POST", tasks, None, Some(r#"{"goal": "g"}"#));
    assert_eq!(a.status, 401);
    conforms(&doc, "post", tasks, &a);

    let a = c.get(tasks, t);
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["tasks"].as_array().unwrap().len(), 2);
    conforms(&doc, "get", tasks, &a);
    let a = c.get(&format!("{tasks}?state=bogus"), t);
    assert_eq!(a.status, 400);
    conforms(&doc, "get", tasks, &a);

    let show = "/orchestrator/tasks/{id}";
    let a = c.get(&format!("{tasks}/{held}"), t);
    assert_eq!(a.status, 200);
    conforms(&doc, "get", show, &a);
    let a = c.get(&format!("{tasks}/01ARZ3NDEKTSV4RRFFQ69G5FAV"), t);
    assert_eq!(a.status, 404);
    conforms(&doc, "get", show, &a);
    let a = c.get(&format!("{tasks}/not-an-id"), t);
    assert_eq!(a.status, 400);
    conforms(&doc, "get", show, &a);

    let transition = "/orchestrator/tasks/{id}/transition";
    let url = format!("{tasks}/{held}/transition");
    let a = c.call("POST", &url, t, Some(r#"{"action": "reject"}"#));
    assert_eq!(a.status, 400);
    conforms(&doc, "post", transition, &a);
    let a = c.call(
        "POST",
        &url,
        t,
        Some(r#"{"action": "reject", "reason": "not now"}"#),
    );
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["state"], "failed");
    conforms(&doc, "post", transition, &a);
    let a = c.call("POST", &url, t, Some(r#"{"action": "approve"}"#));
    assert_eq!(a.status, 409);
    conforms(&doc, "post", transition, &a);
    let a = c.call(
        "POST",
        &format!("{tasks}/01ARZ3NDEKTSV4RRFFQ69G5FAV/transition"),
        t,
        Some(r#"{"action": "cancel"}"#),
    );
    assert_eq!(a.status, 404);
    conforms(&doc, "post", transition, &a);

    // Another method on a described path.
    let a = c.call("POST", "/metrics", None, None);
    assert_eq!(a.status, 405);
    conforms(&doc, "get", "/metrics", &a);
}
