//! A deterministic, seedable generator of a realistic event stream over the
//! five domains, for the benchmark and the fault drills.
//!
//! Entities live through real lifecycles: users are created, updated, a few
//! deleted; suppliers likewise; products are created (with 1 to 4 variants),
//! updated with variants added and removed, published, run out of stock,
//! restored, discontinued and deleted; orders are placed by existing users
//! for 1 to 4 existing products and some are cancelled or shipped; posts are
//! created, updated, published and deleted. Payloads have the shapes and
//! sizes of the backend's documents (0.2 to 1.5 kB), and thousands of
//! entities are alive at once, so batches mix keys. Timestamps rise by 1 ms
//! per event from 2026-01-01, so the same seed gives byte-identical events.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

/// One generated event: its topic's domain, key and JSON bytes.
#[derive(Debug, Clone)]
pub struct Generated {
    pub domain: &'static str,
    pub entity_id: String,
    pub event_id: String,
    pub event_type: &'static str,
    pub payload: Vec<u8>,
}

#[derive(Clone)]
struct Product {
    id: String,
    supplier: String,
    name: String,
    price: i64,
    variants: Vec<String>,
    status: &'static str,
    created: String,
    published: Option<String>,
}

struct Order {
    id: String,
    number: String,
}

struct Post {
    id: String,
    author: String,
    published: Option<String>,
    created: String,
}

/// Generates `n` events from `seed`.
pub struct Generator {
    rng: StdRng,
    clock_ms: i64,
    users: Vec<(String, String, String)>, // id, name, created
    suppliers: Vec<(String, String)>,     // id, created
    products: Vec<Product>,
    orders: Vec<Order>,
    posts: Vec<Post>,
    order_seq: u64,
}

const FIRST: [&str; 12] = [
    "Zoë", "Ana", "Kenji", "Amara", "Lukas", "Priya", "Mateo", "Sofía", "Olu", "Mei", "Jonas",
    "Fatima",
];
const LAST: [&str; 10] = [
    "Müller", "Lima", "Sato", "Okafor", "Novak", "Iyer", "García", "Chen", "Berg", "Haddad",
];
const CATEGORIES: [&str; 6] = [
    "home_kitchen",
    "electronics",
    "fashion",
    "books",
    "garden",
    "toys",
];
const COLOURS: [&str; 8] = [
    "White", "Blue", "Green", "Red", "Black", "Sand", "Olive", "Coral",
];

impl Generator {
    pub fn new(seed: u64) -> Generator {
        Generator {
            rng: StdRng::seed_from_u64(seed),
            clock_ms: 0,
            users: Vec::new(),
            suppliers: Vec::new(),
            products: Vec::new(),
            orders: Vec::new(),
            posts: Vec::new(),
            order_seq: 0,
        }
    }

    /// The whole stream of `n` events.
    pub fn stream(seed: u64, n: usize) -> Vec<Generated> {
        let mut g = Generator::new(seed);
        (0..n).map(|_| g.next_event()).collect()
    }

    fn id(&mut self) -> String {
        format!("{:024x}", self.rng.random::<u128>() & ((1u128 << 96) - 1))
    }

    fn now(&mut self) -> String {
        self.clock_ms += 1;
        let t = chrono::DateTime::from_timestamp_millis(1_767_225_600_000 + self.clock_ms)
            .expect("in range");
        t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
    }

    fn envelope(
        &mut self,
        domain: &'static str,
        event_type: &'static str,
        entity: &str,
        ts: &str,
        data: Value,
    ) -> Generated {
        let event_id = uuid::Builder::from_random_bytes(self.rng.random()).into_uuid();
        let v = json!({
            "event_type": event_type,
            "event_id": event_id.to_string(),
            "timestamp": ts,
            "entity_id": entity,
            "data": data,
        });
        Generated {
            domain,
            entity_id: entity.to_owned(),
            event_id: event_id.to_string(),
            event_type,
            payload: serde_json::to_vec(&v).expect("JSON serialises"),
        }
    }

    fn name(&mut self) -> String {
        let f = FIRST[self.rng.random_range(0..FIRST.len())];
        let l = LAST[self.rng.random_range(0..LAST.len())];
        format!("{f} {l}")
    }

    /// The next event of the stream.
    pub fn next_event(&mut self) -> Generated {
        loop {
            let roll = self.rng.random_range(0..100);
            let event = match roll {
                0..=9 => Some(self.user_created()),
                10..=13 => self.user_updated(),
                14 => self.user_deleted(),
                15..=16 => Some(self.supplier_created()),
                17 if self.rng.random_bool(0.2) => self.supplier_deleted(),
                17 => self.supplier_updated(),
                18..=27 => self.product_created(),
                28..=33 => self.product_updated(),
                34..=38 => self.product_lifecycle(),
                39 => self.product_deleted(),
                40..=69 => self.order_created(),
                70..=74 => self.order_closed(),
                75..=86 => self.post_created(),
                87..=92 => self.post_updated(),
                93..=97 => self.post_published(),
                _ => self.post_deleted(),
            };
            if let Some(e) = event {
                return e;
            }
        }
    }

    fn user_doc(&mut self, id: &str, name: &str, created: &str, updated: &str) -> Value {
        let email = format!(
            "{}.{}@example.com",
            name.to_lowercase().replace(' ', "."),
            &id[18..]
        );
        let bio = if self.rng.random_bool(0.5) {
            Value::from(format!(
                "{name} writes about {} and travel.",
                CATEGORIES[self.rng.random_range(0..CATEGORIES.len())]
            ))
        } else {
            Value::Null
        };
        json!({
            "id": id,
            "contact_info": {"primary_email": email, "phone": format!("+49 30 {}", self.rng.random_range(1_000_000..9_999_999))},
            "profile": {"display_name": name, "avatar": format!("https://cdn.example.com/a/{id}.png"), "bio": bio},
            "deleted_at": null,
            "created_at": created,
            "updated_at": updated,
        })
    }

    fn user_created(&mut self) -> Generated {
        let id = self.id();
        let name = self.name();
        let ts = self.now();
        let data = self.user_doc(&id, &name, &ts, &ts);
        self.users.push((id.clone(), name, ts.clone()));
        self.envelope("user", "user.created", &id, &ts, data)
    }

    /// An index below `n` (none if `n` is 0); recent entities are busier.
    fn pick(&mut self, n: usize) -> Option<usize> {
        (n > 0).then(|| {
            let window = n.min(2000);
            n - 1 - self.rng.random_range(0..window)
        })
    }

    fn user_updated(&mut self) -> Option<Generated> {
        let i = self.pick(self.users.len())?;
        let (id, _, created) = self.users[i].clone();
        let name = self.name();
        self.users[i].1 = name.clone();
        let ts = self.now();
        let data = self.user_doc(&id, &name, &created, &ts);
        Some(self.envelope("user", "user.updated", &id, &ts, data))
    }

    fn user_deleted(&mut self) -> Option<Generated> {
        if self.users.len() < 50 {
            return None;
        }
        let i = self.pick(self.users.len())?;
        let (id, _, _) = self.users.swap_remove(i);
        let ts = self.now();
        Some(self.envelope("user", "user.deleted", &id, &ts, json!({"user_id": id})))
    }

    fn supplier_deleted(&mut self) -> Option<Generated> {
        if self.suppliers.len() < 20 {
            return None;
        }
        let i = self.pick(self.suppliers.len())?;
        let (id, _) = self.suppliers.swap_remove(i);
        let ts = self.now();
        Some(self.envelope(
            "supplier",
            "supplier.deleted",
            &id,
            &ts,
            json!({"supplier_id": id}),
        ))
    }

    fn supplier_doc(&mut self, id: &str, created: &str, updated: &str) -> Value {
        let name = self.name();
        let company = format!("{} Trading", name.split(' ').nth(1).unwrap_or("ACME"));
        json!({
            "id": id,
            "contact_info": {
                "primary_email": format!("sales@{}.example", &id[16..]),
                "primary_phone": "+1-555-0100",
                "contact_person_name": name,
                "contact_person_title": "Head of Sales",
                "contact_person_email": format!("contact@{}.example", &id[16..]),
                "contact_person_phone": null,
            },
            "company_info": {
                "legal_name": format!("{company} LLC"),
                "dba_name": company,
                "business_address": {"street": format!("{} Main St", self.rng.random_range(1..999)), "city": "Springfield", "state": "IL", "zip_code": "62701", "country": "US"},
            },
            "business_info": {
                "support_email": format!("help@{}.example", &id[16..]),
                "support_phone": "+1-555-0199",
                "website": format!("https://{}.example", &id[16..]),
                "social_urls": {"instagram": format!("https://instagram.com/{}", &id[16..]), "x": null},
            },
            "created_at": created,
            "updated_at": updated,
        })
    }

    fn supplier_created(&mut self) -> Generated {
        let id = self.id();
        let ts = self.now();
        let data = self.supplier_doc(&id, &ts, &ts);
        self.suppliers.push((id.clone(), ts.clone()));
        self.envelope("supplier", "supplier.created", &id, &ts, data)
    }

    fn supplier_updated(&mut self) -> Option<Generated> {
        let i = self.pick(self.suppliers.len())?;
        let (id, created) = self.suppliers[i].clone();
        let ts = self.now();
        let data = self.supplier_doc(&id, &created, &ts);
        Some(self.envelope("supplier", "supplier.updated", &id, &ts, data))
    }

    fn product_doc(&mut self, p: &Product, updated: &str) -> Value {
        let mut variants = serde_json::Map::new();
        for (k, v) in p.variants.iter().enumerate() {
            variants.insert(
                v.clone(),
                json!({
                    "sku": format!("SKU-{}-{k}", &p.id[16..]),
                    "price_cents": p.price + 50 * k as i64,
                    "quantity": self.rng.random_range(0..50),
                    "attributes": [{"name": "color", "value": v.to_lowercase()}],
                }),
            );
        }
        json!({
            "id": p.id,
            "supplier_id": p.supplier,
            "name": p.name,
            "description": "Stoneware, dishwasher safe.\nHandmade in small batches.",
            "category": CATEGORIES[p.id.as_bytes()[23] as usize % CATEGORIES.len()],
            "base_price_cents": p.price,
            "status": p.status,
            "metadata": {"base_sku": format!("SKU-{}", &p.id[16..]), "tags": ["gift", "new"]},
            "stats": {"view_count": self.rng.random_range(0..5000), "favorite_count": self.rng.random_range(0..300), "purchase_count": 0, "review_count": 0, "average_rating": 0},
            "variants": variants,
            "published_at": p.published,
            "created_at": p.created,
            "updated_at": updated,
        })
    }

    fn product_created(&mut self) -> Option<Generated> {
        let s = self.pick(self.suppliers.len())?;
        let id = self.id();
        let ts = self.now();
        let n = self.rng.random_range(1..=4);
        let start = self.rng.random_range(0..COLOURS.len());
        let p = Product {
            id: id.clone(),
            supplier: self.suppliers[s].0.clone(),
            name: format!(
                "{} Mug – {} ml",
                COLOURS[start],
                100 * self.rng.random_range(2..6)
            ),
            price: 100 * self.rng.random_range(5..90),
            variants: (0..n)
                .map(|k| COLOURS[(start + k) % COLOURS.len()].to_owned())
                .collect(),
            status: "draft",
            created: ts.clone(),
            published: None,
        };
        let data = self.product_doc(&p, &ts);
        self.products.push(p);
        Some(self.envelope("product", "product.created", &id, &ts, data))
    }

    fn product_updated(&mut self) -> Option<Generated> {
        let i = self.pick(self.products.len())?;
        let mut p = self.products[i].clone();
        // Add a variant, or drop one (never the last).
        if p.variants.len() > 1 && self.rng.random_bool(0.5) {
            let k = self.rng.random_range(0..p.variants.len());
            p.variants.remove(k);
        } else if p.variants.len() < COLOURS.len() {
            let c = COLOURS
                .iter()
                .find(|c| !p.variants.iter().any(|v| v == *c))
                .expect("a free colour");
            p.variants.push((*c).to_owned());
        }
        p.price += 10;
        let ts = self.now();
        let data = self.product_doc(&p, &ts);
        let id = p.id.clone();
        self.products[i] = p;
        Some(self.envelope("product", "product.updated", &id, &ts, data))
    }

    fn product_lifecycle(&mut self) -> Option<Generated> {
        let i = self.pick(self.products.len())?;
        let ts = self.now();
        let mut p = self.products[i].clone();
        let event_type = match p.status {
            "draft" => {
                p.status = "active";
                p.published = Some(ts.clone());
                "product.published"
            }
            "active" if self.rng.random_bool(0.7) => {
                p.status = "out_of_stock";
                "product.out_of_stock"
            }
            "active" => {
                p.status = "discontinued";
                "product.discontinued"
            }
            "out_of_stock" => {
                p.status = "active";
                "product.restored"
            }
            _ => return None,
        };
        let data = self.product_doc(&p, &ts);
        let id = p.id.clone();
        self.products[i] = p;
        Some(self.envelope("product", event_type, &id, &ts, data))
    }

    fn product_deleted(&mut self) -> Option<Generated> {
        if self.products.len() < 50 {
            return None;
        }
        let i = self.pick(self.products.len())?;
        let p = self.products.swap_remove(i);
        let ts = self.now();
        Some(self.envelope(
            "product",
            "product.deleted",
            &p.id,
            &ts,
            json!({"product_id": p.id}),
        ))
    }

    fn order_created(&mut self) -> Option<Generated> {
        let u = self.pick(self.users.len())?;
        if self.products.is_empty() {
            return None;
        }
        let (user, name, _) = self.users[u].clone();
        let id = self.id();
        self.order_seq += 1;
        let number = format!("ORD-{}-{:07}", &id[18..], self.order_seq);
        let ts = self.now();
        let n = self.rng.random_range(1..=4);
        let mut items = Vec::new();
        let mut total = 0;
        for k in 0..n {
            let pi = self.pick(self.products.len()).expect("products exist");
            let p = self.products[pi].clone();
            let quantity = self.rng.random_range(1..4);
            let variant = p.variants[self.rng.random_range(0..p.variants.len())].clone();
            total += quantity * p.price;
            items.push(json!({
                "item_id": (k + 1).to_string(),
                "product_snapshot": {"product_id": p.id, "product_name": p.name, "supplier_id": p.supplier, "variant_name": variant, "image_url": null},
                "quantity": quantity,
                "unit_price_cents": p.price,
                "total_cents": quantity * p.price,
            }));
        }
        let data = json!({
            "id": id,
            "order_number": number,
            "customer": {"user_id": user, "display_name": name, "email": format!("{}@example.com", &user[16..])},
            "shipping_address": {"recipient_name": name, "phone": "+49 30 1234567", "street": "Torstraße 1", "city": "Berlin", "state": null, "zip_code": "10119", "country": "DE"},
            "items": items,
            "status": "pending",
            "total_cents": total,
            "shipment": null,
            "cancelled_at": null,
            "created_at": ts,
            "updated_at": ts,
        });
        self.orders.push(Order {
            id: id.clone(),
            number,
        });
        Some(self.envelope("order", "order.created", &id, &ts, data))
    }

    fn order_closed(&mut self) -> Option<Generated> {
        // Orders close in roughly the order they were placed.
        let k = self.pick(self.orders.len())?;
        let order = self.orders.swap_remove(k);
        let (id, number) = (order.id, order.number);
        let ts = self.now();
        if self.rng.random_bool(0.3) {
            Some(self.envelope(
                "order",
                "order.cancelled",
                &id,
                &ts,
                json!({"order_number": number}),
            ))
        } else {
            let tracking = format!("JD{:018}", self.rng.random_range(0..u64::MAX / 100));
            Some(self.envelope(
                "order",
                "order.shipped",
                &id,
                &ts,
                json!({"order_number": number, "carrier": "DHL", "tracking_number": tracking, "shipped_at": ts}),
            ))
        }
    }

    fn post_doc(&mut self, p: &Post, updated: &str) -> Value {
        let text = format!(
            "Look at this — {} mug, so good! #{}",
            COLOURS[self.rng.random_range(0..COLOURS.len())],
            CATEGORIES[self.rng.random_range(0..CATEGORIES.len())]
        );
        json!({
            "id": p.id,
            "post_type": "link",
            "author": {"user_id": p.author, "display_name": "Author", "avatar": null, "author_type": "user"},
            "text_content": text,
            "media": [{"type": "image", "url": format!("https://cdn.example.com/p/{}.jpg", &p.id[16..]), "width": 1200, "height": 800}],
            "link_preview": {"url": "https://shop.example/mug", "title": "Mug", "description": null, "image": null},
            "stats": {"view_count": self.rng.random_range(0..9000), "like_count": self.rng.random_range(0..500), "comment_count": 0, "share_count": 0},
            "published_at": p.published,
            "deleted_at": null,
            "created_at": p.created,
            "updated_at": updated,
        })
    }

    fn post_created(&mut self) -> Option<Generated> {
        let u = self.pick(self.users.len())?;
        let ts = self.now();
        let p = Post {
            id: self.id(),
            author: self.users[u].0.clone(),
            published: None,
            created: ts.clone(),
        };
        let data = self.post_doc(&p, &ts);
        let id = p.id.clone();
        self.posts.push(p);
        Some(self.envelope("post", "post.created", &id, &ts, data))
    }

    fn post_updated(&mut self) -> Option<Generated> {
        let i = self.pick(self.posts.len())?;
        let ts = self.now();
        let p = Post {
            id: self.posts[i].id.clone(),
            author: self.posts[i].author.clone(),
            published: self.posts[i].published.clone(),
            created: self.posts[i].created.clone(),
        };
        let data = self.post_doc(&p, &ts);
        Some(self.envelope("post", "post.updated", &p.id, &ts, data))
    }

    fn post_published(&mut self) -> Option<Generated> {
        let i = self.pick(self.posts.len())?;
        if self.posts[i].published.is_some() {
            return None;
        }
        let ts = self.now();
        self.posts[i].published = Some(ts.clone());
        let p = Post {
            id: self.posts[i].id.clone(),
            author: self.posts[i].author.clone(),
            published: Some(ts.clone()),
            created: self.posts[i].created.clone(),
        };
        let data = self.post_doc(&p, &ts);
        Some(self.envelope("post", "post.published", &p.id, &ts, data))
    }

    fn post_deleted(&mut self) -> Option<Generated> {
        if self.posts.len() < 50 {
            return None;
        }
        let i = self.pick(self.posts.len())?;
        let p = self.posts.swap_remove(i);
        let ts = self.now();
        Some(self.envelope("post", "post.deleted", &p.id, &ts, json!({"post_id": p.id})))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_stream_and_every_event_projects() {
        let a = Generator::stream(7, 3000);
        let b = Generator::stream(7, 3000);
        assert_eq!(
            a.iter().map(|e| &e.payload).collect::<Vec<_>>(),
            b.iter().map(|e| &e.payload).collect::<Vec<_>>()
        );
        assert_ne!(a[0].payload, Generator::stream(8, 1)[0].payload);
        let mut types = std::collections::BTreeSet::new();
        for e in &a {
            let env: events::RawEnvelope = events::Envelope::from_slice(&e.payload).unwrap();
            let domain = flatten::DOMAINS
                .into_iter()
                .find(|d| d.name == e.domain)
                .unwrap();
            let ops = projector_host::sandbox::envelope_view(&env, |flat| (domain.project)(flat));
            assert!(ops.is_ok(), "{}: {:?}", e.event_type, ops);
            types.insert(e.event_type);
        }
        assert_eq!(types.len(), 20, "every event type appears: {types:?}");
    }
}
