//! The MongoDB-wire server of the stack is real: a document goes in through
//! the official driver and comes back out unchanged.

use mongodb::bson::{DateTime, doc, oid::ObjectId};

fn mongodb_uri() -> String {
    std::env::var("MONGODB_URI").unwrap_or_else(|_| "mongodb://127.0.0.1:27017/".to_owned())
}

#[tokio::test]
async fn a_document_round_trips_through_the_mongodb_driver() {
    let client = mongodb::Client::with_uri_str(mongodb_uri()).await.unwrap();
    let db = client.database(&format!("stack_test_{}", ObjectId::new().to_hex()));
    let users = db.collection::<mongodb::bson::Document>("users");
    let id = ObjectId::new();
    let now = DateTime::now();
    users
        .insert_one(doc! {
            "_id": id,
            "contact_info": {"primary_email": "zoë@example.com", "phone": null},
            "profile": {"display_name": "Zoë 🌻"},
            "created_at": now,
        })
        .await
        .unwrap();
    let found = users
        .find_one(doc! {"_id": id})
        .await
        .unwrap()
        .expect("the document is there");
    assert_eq!(found.get_object_id("_id").unwrap(), id);
    assert_eq!(
        found
            .get_document("contact_info")
            .unwrap()
            .get_str("primary_email")
            .unwrap(),
        "zoë@example.com"
    );
    assert_eq!(
        found
            .get_document("profile")
            .unwrap()
            .get_str("display_name")
            .unwrap(),
        "Zoë 🌻"
    );
    assert_eq!(found.get_datetime("created_at").unwrap(), &now);
    assert!(
        users
            .find_one(doc! {"_id": ObjectId::new()})
            .await
            .unwrap()
            .is_none()
    );
    db.drop().await.unwrap();
}
