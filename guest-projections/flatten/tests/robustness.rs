//! Arbitrary JSON into every domain never panics and never returns an
//! operation outside what the domain declares.

use projection_flatten::{DOMAINS, Envelope, ProjectionError, RowOp};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| json!(i)),
        any::<u64>().prop_map(|i| json!(i)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        prop_oneof![
            ".{0,20}",
            Just("2025-01-01T00:00:00Z".to_owned()),
            Just("9999-12-31T23:59:59.999999Z".to_owned()),
            Just("x".repeat(100_000)),
        ]
        .prop_map(Value::String),
    ];
    let keys = prop_oneof![
        Just("contact_info"),
        Just("profile"),
        Just("primary_email"),
        Just("company_info"),
        Just("business_address"),
        Just("business_info"),
        Just("social_urls"),
        Just("variants"),
        Just("Default"),
        Just("price_cents"),
        Just("quantity"),
        Just("stats"),
        Just("metadata"),
        Just("customer"),
        Just("shipping_address"),
        Just("items"),
        Just("product_snapshot"),
        Just("item_id"),
        Just("author"),
        Just("media"),
        Just("link_preview"),
        Just("created_at"),
        Just("updated_at"),
        Just("deleted_at"),
        Just("published_at"),
        Just("status"),
        Just("shipped_at"),
        Just("user_id"),
        Just(""),
        Just("ü"),
    ];
    leaf.prop_recursive(6, 64, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((keys.clone(), inner), 0..8).prop_map(|kv| Value::Object(
                kv.into_iter()
                    .map(|(k, v)| (k.to_owned(), v))
                    .collect::<Map<_, _>>()
            )),
        ]
    })
}

fn check(event_type: &str, entity_id: &str, data: &str) {
    for d in DOMAINS {
        let info = (d.info)();
        let env = Envelope {
            event_type,
            event_id: "e",
            timestamp: "2025-01-01T00:00:00Z",
            entity_id,
            data,
        };
        match (d.project)(&env) {
            Ok(ops) => {
                for op in &ops {
                    assert!(info.allows(op), "{}: undeclared op {op:?}", d.name);
                    assert!(!matches!(op, RowOp::Upsert(u) if u.key.is_empty()));
                }
            }
            Err(ProjectionError::InvalidEvent(m) | ProjectionError::Unsupported(m)) => {
                assert!(!m.is_empty())
            }
            Err(e) => panic!("unexpected error {e:?}"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_documents_never_panic_nor_escape_the_declared_tables(
        data in arb_json(),
        type_index in 0usize..21,
        entity in prop_oneof![Just(String::new()), Just("65a1f0c2e4b0a1b2c3d4e5f6".to_owned()), ".{0,30}"],
    ) {
        let types: Vec<String> = DOMAINS.iter().flat_map(|d| (d.info)().handles).chain(["order.refunded".to_owned()]).collect();
        check(&types[type_index], &entity, &data.to_string());
    }

    #[test]
    fn arbitrary_text_as_data_never_panics(data in ".{0,200}") {
        check("order.created", "o1", &data);
    }
}

/// The projection of `event_type`'s domain refuses the event as invalid
/// (not `Ok`, not another error).
fn assert_invalid(event_type: &str, entity_id: &str, data: &str) {
    let d = projection_flatten::domain(event_type.split('.').next().unwrap()).unwrap();
    let env = Envelope {
        event_type,
        event_id: "e",
        timestamp: "2025-01-01T00:00:00Z",
        entity_id,
        data,
    };
    match (d.project)(&env) {
        Err(ProjectionError::InvalidEvent(m)) => assert!(!m.is_empty()),
        other => panic!("{event_type} with {data:.60}: expected invalid-event, got {other:?}"),
    }
}

#[test]
fn deep_nesting_and_huge_numbers_are_invalid_not_fatal() {
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    assert_invalid("product.created", "p1", &deep);
    let deep_obj = format!("{}1{}", r#"{"variants":"#.repeat(5_000), "}".repeat(5_000));
    assert_invalid("product.created", "p1", &deep_obj);
    assert_invalid("order.created", "o1", r#"{"total_cents": 1e400}"#);
    assert_invalid(
        "order.created",
        "o1",
        r#"{"total_cents": 123456789012345678901234567890}"#,
    );
}

#[test]
fn a_missing_entity_id_or_data_is_an_invalid_event() {
    for d in DOMAINS {
        let handles = (d.info)().handles;
        let t = handles[0].as_str();
        for (entity, data) in [
            ("", "{}"),
            ("  ", "{}"),
            ("x", ""),
            ("x", "[]"),
            ("x", "\"s\""),
        ] {
            let env = Envelope {
                event_type: t,
                event_id: "e",
                timestamp: "2025-01-01T00:00:00Z",
                entity_id: entity,
                data,
            };
            assert!(
                matches!((d.project)(&env), Err(ProjectionError::InvalidEvent(_))),
                "{t} with entity {entity:?} and data {data:?}"
            );
        }
    }
}

#[test]
fn a_payload_id_that_names_another_entity_is_invalid() {
    let d = projection_flatten::USER;
    let env = Envelope {
        event_type: "user.deleted",
        event_id: "e",
        timestamp: "2025-01-01T00:00:00Z",
        entity_id: "a",
        data: r#"{"user_id": "b"}"#,
    };
    assert!(
        matches!((d.project)(&env), Err(ProjectionError::InvalidEvent(m)) if m.contains("does not match"))
    );
}

#[test]
fn missing_nested_objects_give_null_columns() {
    let d = projection_flatten::ORDER;
    let env = Envelope {
        event_type: "order.created",
        event_id: "e",
        timestamp: "2025-01-01T00:00:00Z",
        entity_id: "o1",
        data: r#"{"customer": null}"#,
    };
    let ops = (d.project)(&env).unwrap();
    let RowOp::Upsert(u) = &ops[0] else {
        panic!("{ops:?}")
    };
    let email = u
        .values
        .iter()
        .find(|c| c.name == "customer_email")
        .unwrap();
    assert_eq!(email.value, projection_flatten::Value::Null);
    let RowOp::Replace(r) = &ops[1] else {
        panic!("{ops:?}")
    };
    assert!(r.rows.is_empty());
}
