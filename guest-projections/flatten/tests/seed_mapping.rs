//! The columns of every fixture's rows, written by hand from the seed's
//! flattening tables (`users.email <- data.contact_info.primary_email`, ...)
//! and the fixture's own JSON, not from the code's output: the golden files
//! (`golden.rs`) only say the output did not change; these say it is right.
//!
//! Timestamps are expected in UTC with six fractional digits (the contract's
//! `timestamp` value); JSON columns are compared as JSON values.

use projection_flatten::{Column, Envelope, RowOp, Value, domain};

const USER: &str = "65a1f0c2e4b0a1b2c3d4e5f6";
const SUPPLIER: &str = "65a1f0c2e4b0a1b2c3d4e5a1";
const PRODUCT: &str = "65a1f0c2e4b0a1b2c3d4e5b2";
const ORDER: &str = "65a1f0c2e4b0a1b2c3d4e5c3";
const POST: &str = "65a1f0c2e4b0a1b2c3d4e5d4";
const MUG: &str = "Café Crème Mug – 350 ml";

/// An expected column value.
#[derive(Debug, Clone, Copy)]
enum W {
    T(&'static str),
    I(i64),
    F(f64),
    Null,
    /// A timestamp, as RFC 3339 UTC with microseconds.
    Ts(&'static str),
    /// JSON text, compared as a JSON value.
    J(&'static str),
}

fn project(event_type: &str) -> Vec<RowOp> {
    let path = manifest_dir()
        .join("../fixtures")
        .join(format!("{event_type}.json"));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let data = v["data"].to_string();
    let env = Envelope {
        event_type: v["event_type"].as_str().unwrap(),
        event_id: v["event_id"].as_str().unwrap(),
        timestamp: v["timestamp"].as_str().unwrap(),
        entity_id: v["entity_id"].as_str().unwrap(),
        data: &data,
    };
    let topic = event_type.split('.').next().unwrap();
    (domain(topic).unwrap().project)(&env).unwrap_or_else(|e| panic!("{event_type}: {e}"))
}

fn matches(got: &Value, want: W) -> bool {
    match (got, want) {
        (Value::Text(s), W::T(w)) => s == w,
        (Value::Int(i), W::I(w)) => *i == w,
        (Value::Int(i), W::F(w)) => (*i as f64 - w).abs() < 1e-9,
        (Value::Float(f), W::F(w)) => (f - w).abs() < 1e-9,
        (Value::Null, W::Null) => true,
        (Value::Timestamp(s), W::Ts(w)) => s == w,
        (Value::Json(s), W::J(w)) => {
            serde_json::from_str::<serde_json::Value>(s).unwrap()
                == serde_json::from_str::<serde_json::Value>(w).unwrap()
        }
        _ => false,
    }
}

fn find<'a>(cols: &'a [Column], name: &str) -> Option<&'a Value> {
    cols.iter().find(|c| c.name == name).map(|c| &c.value)
}

/// Checks `table.column` of the row an upsert or update of `ops` writes.
fn row(event_type: &str, ops: &[RowOp], table: &str, want: &[(&str, W)]) {
    let written = ops.iter().find_map(|op| match op {
        RowOp::Upsert(u) | RowOp::Update(u) if u.table == table => Some(u),
        _ => None,
    });
    let u = written.unwrap_or_else(|| panic!("{event_type}: no row written to {table}: {ops:?}"));
    for (name, w) in want {
        let got = find(&u.key, name)
            .or_else(|| find(&u.values, name))
            .unwrap_or_else(|| panic!("{event_type}: {table}.{name} is not written"));
        assert!(
            matches(got, *w),
            "{event_type}: {table}.{name} is {got:?}, the seed's mapping gives {w:?}"
        );
    }
}

/// Checks the child rows a replace of `ops` gives `parent_id`'s `table`,
/// found by `by` (a column of each row), exactly these and no others.
fn children(
    event_type: &str,
    ops: &[RowOp],
    table: &str,
    parent: (&str, &'static str),
    by: &str,
    want: &[&[(&str, W)]],
) {
    let r = ops
        .iter()
        .find_map(|op| match op {
            RowOp::Replace(r) if r.table == table => Some(r),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{event_type}: no replace of {table}"));
    assert!(
        matches(find(&r.parent, parent.0).unwrap(), W::T(parent.1)),
        "{event_type}: {table} replaced under the wrong parent {:?}",
        r.parent
    );
    assert_eq!(
        r.rows.len(),
        want.len(),
        "{event_type}: {table} rows {:?}",
        r.rows
    );
    for expected in want {
        let (_, id) = expected.iter().find(|(n, _)| *n == by).unwrap();
        let got = r
            .rows
            .iter()
            .find(|cols| find(cols, by).is_some_and(|v| matches(v, *id)))
            .unwrap_or_else(|| panic!("{event_type}: no {table} row with {by} {id:?}"));
        for (name, w) in *expected {
            let v = find(got, name)
                .unwrap_or_else(|| panic!("{event_type}: {table}.{name} is not written"));
            assert!(
                matches(v, *w),
                "{event_type}: {table}.{name} is {v:?}, the seed's mapping gives {w:?}"
            );
        }
    }
}

/// Checks that `ops` is exactly one soft delete (or delete) of `table` by `key`.
fn deletes(event_type: &str, ops: &[RowOp], soft: bool, table: &str, key: (&str, &'static str)) {
    assert_eq!(ops.len(), 1, "{event_type}: {ops:?}");
    let k = match (&ops[0], soft) {
        (RowOp::SoftDelete(k), true) | (RowOp::Delete(k), false) => k,
        (other, _) => {
            panic!("{event_type}: expected a {table} delete (soft: {soft}), got {other:?}")
        }
    };
    assert_eq!(k.table, table);
    assert!(
        matches(find(&k.key, key.0).unwrap(), W::T(key.1)),
        "{event_type}: {:?}",
        k.key
    );
}

#[test]
fn users_follow_the_seed_mapping() {
    let e = "user.created";
    row(
        e,
        &project(e),
        "users",
        &[
            ("user_id", W::T(USER)),
            ("email", W::T("zoë.müller@example.com")),
            ("phone", W::T("+49 30 1234567")),
            ("display_name", W::T("Zoë Müller 🌻")),
            ("avatar", W::T("https://cdn.example.com/a/zoe.png")),
            ("bio", W::Null),
            ("deleted_at", W::Null),
            ("created_at", W::Ts("2025-01-05T09:30:00.123456Z")),
        ],
    );
    let e = "user.updated";
    row(
        e,
        &project(e),
        "users",
        &[
            ("phone", W::Null),
            ("bio", W::T("Gärtnerin, 東京 → Berlin")),
            // 12:00 at +01:00.
            ("updated_at", W::Ts("2025-02-01T11:00:00.000000Z")),
        ],
    );
    let e = "user.deleted";
    deletes(e, &project(e), true, "users", ("user_id", USER));
}

#[test]
fn suppliers_follow_the_seed_mapping() {
    let e = "supplier.created";
    row(
        e,
        &project(e),
        "suppliers",
        &[
            ("supplier_id", W::T(SUPPLIER)),
            ("email", W::T("sales@acme.example")),
            ("primary_phone", W::T("+1-555-0100")),
            ("contact_person_name", W::T("Ana Lima")),
            ("contact_person_title", W::T("Head of Sales")),
            ("contact_person_email", W::T("ana@acme.example")),
            ("contact_person_phone", W::Null),
            ("legal_name", W::T("ACME Trading LLC")),
            ("dba_name", W::T("ACME")),
            ("street", W::T("1 Main St, Suite 200")),
            ("city", W::T("Springfield")),
            ("state", W::T("IL")),
            ("zip_code", W::T("62701")),
            ("country", W::T("US")),
            ("support_email", W::T("help@acme.example")),
            ("support_phone", W::T("+1-555-0199")),
            ("website", W::T("https://acme.example")),
            (
                "social_urls",
                W::J(r#"{"instagram": "https://instagram.com/acme", "x": null}"#),
            ),
        ],
    );
    let e = "supplier.updated";
    row(
        e,
        &project(e),
        "suppliers",
        &[
            ("street", W::Null),
            ("city", W::Null),
            ("country", W::Null),
            ("social_urls", W::J("{}")),
            ("updated_at", W::Ts("2025-03-01T00:00:00.000000Z")),
        ],
    );
    let e = "supplier.deleted";
    deletes(
        e,
        &project(e),
        false,
        "suppliers",
        ("supplier_id", SUPPLIER),
    );
}

#[test]
fn products_and_their_variants_follow_the_seed_mapping() {
    let e = "product.created";
    let ops = project(e);
    row(
        e,
        &ops,
        "products",
        &[
            ("product_id", W::T(PRODUCT)),
            ("supplier_id", W::T(SUPPLIER)),
            ("name", W::T(MUG)),
            ("category", W::T("home_kitchen")),
            ("base_price_cents", W::I(1500)),
            ("status", W::T("draft")),
            ("view_count", W::I(0)),
            ("average_rating", W::F(0.0)),
            ("published_at", W::Null),
        ],
    );
    let default = [
        ("variant_key", W::T("Default")),
        ("price_cents", W::I(1500)),
        ("quantity", W::I(10)),
    ];
    let blue = [
        ("variant_key", W::T("Blue")),
        ("price_cents", W::I(1650)),
        ("quantity", W::I(3)),
    ];
    children(
        e,
        &ops,
        "product_variants",
        ("product_id", PRODUCT),
        "variant_key",
        &[&default, &blue],
    );

    let e = "product.updated";
    let ops = project(e);
    row(e, &ops, "products", &[("base_price_cents", W::I(1550))]);
    let green = [
        ("variant_key", W::T("Green")),
        ("price_cents", W::I(1700)),
        ("quantity", W::I(0)),
    ];
    // Blue left the document, so it leaves the table.
    children(
        e,
        &ops,
        "product_variants",
        ("product_id", PRODUCT),
        "variant_key",
        &[&default, &green],
    );

    let e = "product.published";
    row(
        e,
        &project(e),
        "products",
        &[
            ("status", W::T("active")),
            ("view_count", W::I(12)),
            ("favorite_count", W::I(2)),
            ("purchase_count", W::I(1)),
            ("review_count", W::I(1)),
            ("average_rating", W::F(4.5)),
            ("published_at", W::Ts("2025-01-09T08:00:00.000000Z")),
        ],
    );
    let e = "product.discontinued";
    row(
        e,
        &project(e),
        "products",
        &[("status", W::T("discontinued"))],
    );

    let e = "product.out_of_stock";
    let ops = project(e);
    row(e, &ops, "products", &[("status", W::T("out_of_stock"))]);
    children(
        e,
        &ops,
        "product_variants",
        ("product_id", PRODUCT),
        "variant_key",
        &[
            &[("variant_key", W::T("Default")), ("quantity", W::I(0))],
            &[("variant_key", W::T("Blue")), ("quantity", W::I(0))],
        ],
    );

    let e = "product.restored";
    let ops = project(e);
    row(e, &ops, "products", &[("status", W::T("active"))]);
    // An empty variants map leaves the product without variants.
    children(
        e,
        &ops,
        "product_variants",
        ("product_id", PRODUCT),
        "variant_key",
        &[],
    );

    let e = "product.deleted";
    deletes(e, &project(e), false, "products", ("product_id", PRODUCT));
}

#[test]
fn orders_and_their_items_follow_the_seed_mapping() {
    let e = "order.created";
    let ops = project(e);
    row(
        e,
        &ops,
        "orders",
        &[
            ("order_id", W::T(ORDER)),
            ("order_number", W::T("ORD-20250110-0001")),
            ("customer_user_id", W::T(USER)),
            ("customer_name", W::T("Zoë Müller 🌻")),
            ("customer_email", W::T("zoë.müller@example.com")),
            ("shipping_recipient_name", W::T("Zoë Müller")),
            ("shipping_phone", W::T("+49 30 1234567")),
            ("shipping_street", W::T("Torstraße 1")),
            ("shipping_city", W::T("Berlin")),
            ("shipping_state", W::Null),
            ("shipping_zip_code", W::T("10119")),
            ("shipping_country", W::T("DE")),
            ("status", W::T("pending")),
            ("total_cents", W::I(4650)),
        ],
    );
    let first = [
        ("item_id", W::T("1")),
        ("product_id", W::T(PRODUCT)),
        ("product_name", W::T(MUG)),
        ("supplier_id", W::T(SUPPLIER)),
        ("variant_name", W::T("Default")),
        ("quantity", W::I(2)),
        ("unit_price_cents", W::I(1500)),
        ("total_cents", W::I(3000)),
    ];
    let second = [
        ("item_id", W::T("2")),
        ("variant_name", W::T("Blue")),
        ("quantity", W::I(1)),
        ("unit_price_cents", W::I(1650)),
        ("total_cents", W::I(1650)),
    ];
    children(
        e,
        &ops,
        "order_items",
        ("order_id", ORDER),
        "item_id",
        &[&first, &second],
    );

    let e = "order.cancelled";
    row(
        e,
        &project(e),
        "orders",
        &[
            ("status", W::T("cancelled")),
            // No cancelled_at in the payload: the event's time.
            ("cancelled_at", W::Ts("2025-01-10T15:00:00.000000Z")),
        ],
    );
    let e = "order.shipped";
    row(
        e,
        &project(e),
        "orders",
        &[
            ("status", W::T("shipped")),
            ("carrier", W::T("DHL")),
            ("tracking_number", W::T("JD014600006281230000")),
            ("shipped_at", W::Ts("2025-01-11T09:59:00.000000Z")),
        ],
    );
}

#[test]
fn posts_follow_the_seed_mapping() {
    let e = "post.created";
    row(
        e,
        &project(e),
        "posts",
        &[
            ("post_id", W::T(POST)),
            ("author_user_id", W::T(USER)),
            ("author_name", W::T("Zoë Müller 🌻")),
            ("post_type", W::T("link")),
            (
                "text_content",
                W::T("Look at this \"mug\" — <b>so</b> good!"),
            ),
            (
                "media_json",
                W::J(
                    r#"[{"type": "image", "url": "https://cdn.example.com/p/1.jpg", "width": 1200, "height": 800}]"#,
                ),
            ),
            ("link_url", W::T("https://shop.example/mug")),
            ("link_title", W::T("Café Crème Mug")),
            ("view_count", W::I(0)),
            ("published_at", W::Null),
            ("deleted_at", W::Null),
        ],
    );
    let e = "post.updated";
    row(
        e,
        &project(e),
        "posts",
        &[
            ("text_content", W::T("edited ✍️")),
            ("link_url", W::Null),
            ("link_title", W::Null),
        ],
    );
    let e = "post.published";
    row(
        e,
        &project(e),
        "posts",
        &[
            ("published_at", W::Ts("2025-01-11T09:00:00.000000Z")),
            ("view_count", W::I(100)),
            ("like_count", W::I(7)),
            ("comment_count", W::I(2)),
            ("share_count", W::I(1)),
        ],
    );
    let e = "post.deleted";
    deletes(e, &project(e), true, "posts", ("post_id", POST));
}

#[test]
fn every_event_type_is_checked_here() {
    let source = include_str!("seed_mapping.rs");
    for d in projection_flatten::DOMAINS {
        for event_type in (d.info)().handles {
            assert!(
                source.contains(&format!("let e = \"{event_type}\";")),
                "{event_type} has no hand-written check"
            );
        }
    }
}

// The checkout the tests run in (cargo sets CARGO_MANIFEST_DIR when it runs
// them), not the one they were compiled in: a shared target folder may hold
// a binary built from another clone of the same sources.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
}
