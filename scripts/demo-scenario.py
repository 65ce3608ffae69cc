#!/usr/bin/env python3
"""A realistic day on the platform, driven through the backend's REST API.

Usage: demo-scenario.py BASE_URL  -> prints progress to stderr and, on the last
line of stdout, the number of events the API emitted (one per mutation).

Every account registers with a password and logs in for a bearer token
(POST /auth/login); each action runs as the account that owns it, and the
moderation at the end runs as the admin (BACKEND_ADMIN_EMAILS lists
admin@example.com in scripts/demo). Users register, suppliers onboard, products are published with variants (one
gains a variant, one runs out of stock and comes back, one is discontinued),
customers place orders (one is cancelled, one shipped), posts are published
and edited, and a few things are deleted. Standard library only.
"""
import json
import sys
import urllib.error
import urllib.request

BASE = sys.argv[1].rstrip("/")
PASSWORD = "demo password 2025"
events = 0
TOKENS = {}  # account id -> bearer token


def call(method, path, body=None, user=None, counts=True):
    """One API call as account `user`; a mutation that answers 2xx emitted
    exactly one event."""
    global events
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(BASE + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if user:
        req.add_header("Authorization", "Bearer " + TOKENS[user])
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            text = r.read().decode()
    except urllib.error.HTTPError as e:
        sys.exit(f"[scenario] {method} {path} failed: {e.code} {e.read().decode()}")
    if method != "GET" and counts:
        events += 1
    return json.loads(text) if text else {}


def register(path, body, email):
    """Registers an account and logs it in; its id."""
    account = call("POST", path, dict(body, password=PASSWORD))["id"]
    login = call("POST", "/auth/login", {"email": email, "password": PASSWORD}, counts=False)
    TOKENS[account] = login["access_token"]
    return account


def step(msg):
    print(f"[scenario] {msg}", file=sys.stderr, flush=True)


step("users register")
people = [
    ("zoe@example.com", "Zoë Müller 🌻", "+49 30 1234567"),
    ("kenji@example.com", "Kenji Sato", "+81 3 1234 5678"),
    ("amara@example.com", "Amara Okafor", None),
    ("lukas@example.com", "Lukas Novak", "+420 601 123 456"),
    ("spam@example.com", "Totally Real Person", None),
    ("admin@example.com", "The Moderator", None),
]
users = []
for email, name, phone in people:
    body = {"email": email, "display_name": name}
    if phone:
        body["phone"] = phone
    users.append(register("/users", body, email))
zoe, kenji, amara, lukas, spammer, admin = users
call("PATCH", f"/users/{kenji}", {"bio": "Ceramics collector in Osaka."}, user=kenji)

step("suppliers onboard")
suppliers = []
for legal, dba, city, country in [
    ("ACME Trading LLC", "ACME", "Springfield", "US"),
    ("Töpferei Berg GmbH", "Berg Keramik", "Leipzig", "DE"),
]:
    slug = dba.lower().replace(" ", "")
    suppliers.append(register("/suppliers", {
        "contact_info": {"primary_email": f"sales@{slug}.example", "primary_phone": "+1-555-0100",
                         "contact_person_name": "Ana Lima"},
        "company_info": {"legal_name": legal, "dba_name": dba,
                         "business_address": {"street": "1 Main St", "city": city, "zip_code": "62701",
                                              "country": country}},
        "business_info": {"support_email": f"help@{slug}.example", "website": f"https://{slug}.example",
                          "social_urls": {"instagram": f"https://instagram.com/{slug}"}},
    }, f"sales@{slug}.example"))
acme, berg = suppliers
call("PATCH", f"/suppliers/{berg}", {"business_info": {"support_phone": "+49 341 555 0199"}}, user=berg)

step("products are created with variants and published")
catalogue = [
    (acme, "Café Crème Mug – 350 ml", "home_kitchen", 1500,
     {"White": 1500, "Blue": 1650}),
    (acme, "Espresso Cup Set", "home_kitchen", 2400, {"Default": 2400}),
    (berg, "Hand-thrown Bowl", "home_kitchen", 3900, {"Sand": 3900, "Olive": 4100, "Coral": 4100}),
    (berg, "Clay Planter", "garden", 2900, {"Small": 2900, "Large": 4500}),
]
products = []
for supplier, name, category, price, variants in catalogue:
    body = {
        "name": name, "category": category, "base_price_cents": price,
        "description": "Stoneware, dishwasher safe.",
        "metadata": {"base_sku": name[:3].upper(), "tags": [category]},
        "variants": {k: {"sku": f"{name[:3].upper()}-{k[:3].upper()}", "price_cents": p, "quantity": 20,
                         "attributes": [{"name": "variant", "value": k.lower()}]}
                     for k, p in variants.items()},
    }
    products.append(call("POST", "/products", body, user=supplier)["id"])
mug, cups, bowl, planter = products
for p, s in [(mug, acme), (cups, acme), (bowl, berg), (planter, berg)]:
    call("POST", f"/products/{p}/publish", user=s)
call("PATCH", f"/products/{mug}", {"variants": {
    "White": {"sku": "CAF-WHI", "price_cents": 1500, "quantity": 20},
    "Blue": {"sku": "CAF-BLU", "price_cents": 1650, "quantity": 20},
    "Green": {"sku": "CAF-GRE", "price_cents": 1700, "quantity": 5}}}, user=acme)
call("POST", f"/products/{bowl}/out-of-stock", user=berg)
call("POST", f"/products/{bowl}/restore", user=berg)

address = {"recipient_name": "Zoë Müller", "street": "Torstraße 1", "city": "Berlin", "zip_code": "10119",
           "country": "DE"}
step("customers place orders")
orders = [
    call("POST", "/orders", {"items": [{"product_id": mug, "variant": "Blue", "quantity": 2},
                                       {"product_id": bowl, "variant": "Sand", "quantity": 1}],
                             "shipping_address": address}, user=zoe)["id"],
    call("POST", "/orders", {"items": [{"product_id": cups, "quantity": 1}],
                             "shipping_address": dict(address, recipient_name="Kenji Sato", city="Osaka",
                                                      country="JP", zip_code="530-0001")}, user=kenji)["id"],
    call("POST", "/orders", {"items": [{"product_id": planter, "variant": "Large", "quantity": 3},
                                       {"product_id": mug, "variant": "Green", "quantity": 1}],
                             "shipping_address": dict(address, recipient_name="Amara Okafor")}, user=amara)["id"],
    call("POST", "/orders", {"items": [{"product_id": bowl, "variant": "Coral", "quantity": 2}],
                             "shipping_address": dict(address, recipient_name="Lukas Novak", city="Prague",
                                                      country="CZ", zip_code="110 00")}, user=lukas)["id"],
]
step("one order is cancelled, one shipped")
call("POST", f"/orders/{orders[1]}/cancel", user=kenji)
call("POST", f"/orders/{orders[0]}/ship", {"carrier": "DHL", "tracking_number": "JD014600006281230000"},
     user=acme)

step("posts are published and edited")
posts = []
for author, text in [(zoe, "Look at this mug — so good!"), (amara, "My planter arrived 🌿"),
                     (spammer, "Buy followers now!!!")]:
    posts.append(call("POST", "/posts", {"post_type": "link", "text_content": text,
                                         "link_preview": {"url": "https://shop.example/mug"}}, user=author)["id"])
call("POST", f"/posts/{posts[0]}/publish", user=zoe)
call("POST", f"/posts/{posts[1]}/publish", user=amara)
call("PATCH", f"/posts/{posts[1]}", {"text_content": "My planter arrived 🌿 — the large one!"}, user=amara)

step("moderation: the spam post and its author go, a product is discontinued")
call("DELETE", f"/posts/{posts[2]}", user=admin)
call("DELETE", f"/users/{spammer}", user=admin)
call("POST", f"/products/{cups}/discontinue", user=acme)

step(f"done: {events} mutations, one event each")
print(events)
