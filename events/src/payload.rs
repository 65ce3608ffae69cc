//! The payloads of the twenty event types: the types the backend stores
//! and emits, and that the projections' tests build their events from, so
//! a field renamed on one side fails the other's tests.
//!
//! A full-document event carries [`WithId`] of the document (`{"id", ...}`);
//! the deletes, the cancellation and the shipment carry the small payloads
//! at the end.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A document as an event carries it: its id (24 hex) first, then its fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WithId<T> {
    pub id: String,
    #[serde(flatten)]
    pub doc: T,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct User {
    pub contact_info: UserContact,
    pub profile: Profile,
    pub deleted_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UserContact {
    pub primary_email: String,
    pub phone: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Profile {
    pub display_name: String,
    pub avatar: Option<String>,
    pub bio: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Supplier {
    pub contact_info: SupplierContact,
    pub company_info: CompanyInfo,
    pub business_info: BusinessInfo,
    pub deleted_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SupplierContact {
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = r"^[^@\s\x00]+@[^@\s\x00]+\.[^@\s\x00]+$", max_length = 254)
    )]
    pub primary_email: String,
    #[cfg_attr(feature = "openapi", schema(max_length = 64))]
    pub primary_phone: Option<String>,
    #[cfg_attr(feature = "openapi", schema(max_length = 255))]
    pub contact_person_name: Option<String>,
    #[cfg_attr(feature = "openapi", schema(max_length = 255))]
    pub contact_person_title: Option<String>,
    #[cfg_attr(feature = "openapi", schema(max_length = 255))]
    pub contact_person_email: Option<String>,
    #[cfg_attr(feature = "openapi", schema(max_length = 64))]
    pub contact_person_phone: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CompanyInfo {
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = r"^[^\x00]*[^\s\x00][^\x00]*$", max_length = 255)
    )]
    pub legal_name: String,
    #[cfg_attr(feature = "openapi", schema(max_length = 255))]
    pub dba_name: Option<String>,
    pub business_address: Option<Address>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Address {
    #[cfg_attr(feature = "openapi", schema(max_length = 255))]
    pub street: Option<String>,
    #[cfg_attr(feature = "openapi", schema(max_length = 128))]
    pub city: Option<String>,
    #[cfg_attr(feature = "openapi", schema(max_length = 128))]
    pub state: Option<String>,
    #[cfg_attr(feature = "openapi", schema(max_length = 32))]
    pub zip_code: Option<String>,
    #[cfg_attr(feature = "openapi", schema(max_length = 64))]
    pub country: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BusinessInfo {
    #[cfg_attr(feature = "openapi", schema(max_length = 255))]
    pub support_email: Option<String>,
    #[cfg_attr(feature = "openapi", schema(max_length = 64))]
    pub support_phone: Option<String>,
    #[cfg_attr(feature = "openapi", schema(max_length = 1024))]
    pub website: Option<String>,
    /// At most 20 (the document says so).
    #[serde(default)]
    pub social_urls: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Product {
    pub supplier_id: String,
    pub name: String,
    pub description: Option<String>,
    pub category: String,
    pub base_price_cents: i64,
    pub status: String,
    pub metadata: Metadata,
    pub stats: Stats,
    pub variants: BTreeMap<String, Variant>,
    pub published_at: Option<String>,
    pub deleted_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    #[cfg_attr(feature = "openapi", schema(max_length = 128))]
    pub base_sku: Option<String>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_items = 50))]
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Stats {
    pub view_count: i64,
    pub favorite_count: i64,
    pub purchase_count: i64,
    pub review_count: i64,
    pub average_rating: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Variant {
    #[cfg_attr(feature = "openapi", schema(max_length = 128))]
    pub sku: Option<String>,
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub price_cents: i64,
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub quantity: i64,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_items = 50))]
    pub attributes: Vec<Attribute>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Attribute {
    #[cfg_attr(feature = "openapi", schema(max_length = 255))]
    pub name: String,
    #[cfg_attr(feature = "openapi", schema(max_length = 1024))]
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Order {
    pub order_number: String,
    pub customer: Customer,
    pub shipping_address: ShippingAddress,
    pub items: Vec<Item>,
    pub status: String,
    pub total_cents: i64,
    pub shipment: Option<Shipment>,
    pub cancelled_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Customer {
    pub user_id: String,
    pub display_name: String,
    pub email: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ShippingAddress {
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = r"^[^\x00]*[^\s\x00][^\x00]*$", max_length = 255)
    )]
    pub recipient_name: String,
    #[cfg_attr(feature = "openapi", schema(max_length = 64))]
    pub phone: Option<String>,
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = r"^[^\x00]*[^\s\x00][^\x00]*$", max_length = 255)
    )]
    pub street: String,
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = r"^[^\x00]*[^\s\x00][^\x00]*$", max_length = 128)
    )]
    pub city: String,
    #[cfg_attr(feature = "openapi", schema(max_length = 128))]
    pub state: Option<String>,
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = r"^[^\x00]*[^\s\x00][^\x00]*$", max_length = 32)
    )]
    pub zip_code: String,
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = r"^[^\x00]*[^\s\x00][^\x00]*$", max_length = 64)
    )]
    pub country: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Item {
    pub item_id: String,
    pub product_snapshot: ProductSnapshot,
    pub quantity: i64,
    pub unit_price_cents: i64,
    pub total_cents: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProductSnapshot {
    pub product_id: String,
    pub product_name: String,
    pub supplier_id: String,
    pub variant_name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Shipment {
    pub carrier: String,
    pub tracking_number: String,
    pub shipped_at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Post {
    pub post_type: String,
    pub author: Author,
    pub text_content: Option<String>,
    pub media: Vec<Media>,
    pub link_preview: Option<LinkPreview>,
    pub stats: PostStats,
    pub published_at: Option<String>,
    pub deleted_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Author {
    pub user_id: String,
    pub display_name: String,
    pub avatar: Option<String>,
    pub author_type: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Media {
    #[serde(rename = "type")]
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = r"^[^\x00]*[^\s\x00][^\x00]*$", max_length = 32)
    )]
    pub kind: String,
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = r"^[^\x00]*[^\s\x00][^\x00]*$", max_length = 2048)
    )]
    pub url: String,
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub width: Option<i64>,
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub height: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LinkPreview {
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = r"^[^\x00]*[^\s\x00][^\x00]*$", max_length = 2048)
    )]
    pub url: String,
    #[cfg_attr(feature = "openapi", schema(max_length = 512))]
    pub title: Option<String>,
    #[cfg_attr(feature = "openapi", schema(max_length = 10000))]
    pub description: Option<String>,
    #[cfg_attr(feature = "openapi", schema(max_length = 2048))]
    pub image: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PostStats {
    pub view_count: i64,
    pub like_count: i64,
    pub comment_count: i64,
    pub share_count: i64,
}

/// `user.deleted`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserDeleted {
    pub user_id: String,
}

/// `supplier.deleted`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SupplierDeleted {
    pub supplier_id: String,
}

/// `product.deleted`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProductDeleted {
    pub product_id: String,
}

/// `post.deleted`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PostDeleted {
    pub post_id: String,
}

/// `order.cancelled`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderCancelled {
    pub order_number: String,
}

/// `order.shipped`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderShipped {
    pub order_number: String,
    pub carrier: String,
    pub tracking_number: String,
    pub shipped_at: String,
}
