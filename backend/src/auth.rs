//! Accounts, passwords and tokens.
//!
//! - Users and suppliers register with a password (`POST /users`,
//!   `POST /suppliers`); its Argon2id hash lives in the `accounts`
//!   collection, keyed by the lower-cased email, never in the user or
//!   supplier document, so no event payload can carry it. The key makes
//!   emails unique across users and suppliers.
//! - `POST /auth/login` answers a signed token (JWT, HS256) naming the
//!   account and its role: `user`, `supplier`, or `admin` for a user whose
//!   email is in the `BACKEND_ADMIN_EMAILS` setting.
//! - Every mutation takes the token as `Authorization: Bearer <token>`
//!   ([`Principal`]); a missing, malformed, expired or forged one is a 401,
//!   an action on somebody else's entity a 403.

use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::routing::post;
use axum::{Json, Router};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use mongodb::bson::{Document, doc, oid::ObjectId};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::validate::Valid;

/// The collection of credentials: `_id` = lower-cased email.
pub const ACCOUNTS: &str = "accounts";

/// Who an account is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Supplier,
    Admin,
}

/// The claims of a token.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    /// The account's id (24 hex).
    sub: String,
    role: Role,
    iss: String,
    iat: u64,
    exp: u64,
}

const ISSUER: &str = "projector-backend";

/// Signs and checks tokens; knows the admins.
pub struct Auth {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
    admins: Vec<String>,
}

impl Auth {
    /// `secret` signs tokens (every backend instance needs the same one);
    /// `admins` are emails whose user account logs in as `admin`.
    pub fn new(secret: &[u8], ttl: Duration, admins: &[String]) -> Auth {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        validation.leeway = 30;
        Auth {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl,
            admins: admins.iter().map(|e| normalise_email(e)).collect(),
        }
    }

    /// A token for `id` in `role`, valid for the configured time.
    pub fn issue(&self, id: ObjectId, role: Role) -> (String, u64) {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub: id.to_hex(),
            role,
            iss: ISSUER.into(),
            iat: now,
            exp: now + self.ttl.as_secs(),
        };
        // HS256 over a serialisable struct cannot fail.
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing does not fail");
        (token, self.ttl.as_secs())
    }

    fn check(&self, token: &str) -> ApiResult<Principal> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                let why = match e.kind() {
                    ErrorKind::ExpiredSignature => "the token has expired; log in again",
                    ErrorKind::InvalidSignature => "the token's signature is not valid",
                    _ => "the token is not valid",
                };
                ApiError::Unauthorized(why.into())
            })?;
        let id = ObjectId::parse_str(&data.claims.sub)
            .map_err(|_| ApiError::Unauthorized("the token names no account".into()))?;
        Ok(Principal {
            id,
            role: data.claims.role,
        })
    }

    fn role_of(&self, kind: Role, email: &str) -> Role {
        if kind == Role::User && self.admins.iter().any(|a| a == email) {
            Role::Admin
        } else {
            kind
        }
    }
}

/// The authenticated caller of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Principal {
    pub id: ObjectId,
    pub role: Role,
}

impl Principal {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// The caller is the user or supplier `owner` (a 24-hex id), or an admin.
    pub fn owns_or_admin(&self, owner: &str, what: &str) -> ApiResult<()> {
        if self.is_admin() || self.is(owner) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "only its owner may change this {what}"
            )))
        }
    }

    /// The caller is `owner` (a 24-hex id).
    pub fn is(&self, owner: &str) -> bool {
        self.id.to_hex() == owner
    }

    /// The caller acts as a user (a customer or an author); an admin is a user.
    pub fn as_user(&self) -> ApiResult<ObjectId> {
        match self.role {
            Role::User | Role::Admin => Ok(self.id),
            Role::Supplier => Err(ApiError::Forbidden(
                "a supplier account cannot do this; log in as a user".into(),
            )),
        }
    }

    /// The caller acts as a supplier.
    pub fn as_supplier(&self) -> ApiResult<ObjectId> {
        match self.role {
            Role::Supplier => Ok(self.id),
            _ => Err(ApiError::Forbidden(
                "only a supplier account can do this".into(),
            )),
        }
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(parts).ok_or_else(|| {
            ApiError::Unauthorized(
                "this action needs a token: Authorization: Bearer <token> from POST /auth/login"
                    .into(),
            )
        })?;
        app.auth.check(token)
    }
}

/// The bearer token of a request, if any.
pub fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(axum::http::header::AUTHORIZATION)?;
    let text = value.to_str().ok()?;
    let (scheme, token) = text.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The subject of a request's token if it is valid (for scoping keys).
pub fn subject(app: &AppState, parts: &Parts) -> Option<ObjectId> {
    bearer(parts)
        .and_then(|t| app.auth.check(t).ok())
        .map(|p| p.id)
}

/// Emails compare case-insensitively.
pub fn normalise_email(email: &str) -> String {
    email.trim().to_lowercase()
}

/// 16 random bytes (a UUID v4 comes from the OS's CSPRNG).
fn new_salt() -> SaltString {
    SaltString::encode_b64(uuid::Uuid::new_v4().as_bytes()).expect("16 bytes make a valid salt")
}

/// Argon2id (the crate's default parameters) on a blocking thread.
pub async fn hash_password(password: String) -> ApiResult<String> {
    tokio::task::spawn_blocking(move || {
        let salt = new_salt();
        argon2::Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
    })
    .await
    .map_err(|e| ApiError::Internal(e.into()))?
    .map_err(|e| ApiError::Internal(anyhow::anyhow!("hashing the password failed: {e}")))
}

async fn verify_password(password: String, hash: String) -> bool {
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash).is_ok_and(|parsed| {
            argon2::Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
    })
    .await
    .unwrap_or(false)
}

/// The credentials of one account.
#[derive(Clone)]
pub struct Accounts {
    collection: mongodb::Collection<Document>,
}

impl Accounts {
    pub fn new(db: &mongodb::Database) -> Self {
        Accounts {
            collection: db.collection(ACCOUNTS),
        }
    }

    /// Claims `email` for the account `id`. A 409 if another account has
    /// it; claiming it again for the same account is a no-op (a retried
    /// registration).
    pub async fn claim(&self, email: &str, id: ObjectId, kind: Role, hash: &str) -> ApiResult<()> {
        let key = normalise_email(email);
        let record =
            doc! {"_id": &key, "account_id": id, "kind": role_name(kind), "password_hash": hash};
        match self.collection.insert_one(record).await {
            Ok(_) => Ok(()),
            Err(e) if crate::store::is_duplicate_key(&e) => {
                let owner = self
                    .collection
                    .find_one(doc! {"_id": &key})
                    .await?
                    .and_then(|d| d.get_object_id("account_id").ok());
                if owner == Some(id) {
                    Ok(())
                } else {
                    Err(ApiError::Conflict(format!(
                        "the email {email:?} is already registered"
                    )))
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Moves an account's login from one email to another (an email edit):
    /// claims the new one, the caller then writes the document and calls
    /// [`Accounts::release`] on the old one.
    pub async fn rename(&self, old: &str, new: &str, id: ObjectId) -> ApiResult<()> {
        if normalise_email(old) == normalise_email(new) {
            return Ok(());
        }
        let Some(current) = self
            .collection
            .find_one(doc! {"_id": normalise_email(old), "account_id": id})
            .await?
        else {
            return Ok(()); // an account without a login (created before accounts existed)
        };
        let kind = kind_of(&current);
        let hash = current
            .get_str("password_hash")
            .unwrap_or_default()
            .to_owned();
        self.claim(new, id, kind, &hash).await
    }

    /// Runs `write` (an update of account `id`) moving its login from `old`
    /// to `new` when they differ: `new` is claimed first (409 if taken),
    /// and afterwards whichever address is stale is freed.
    pub async fn with_email_change<T>(
        &self,
        id: ObjectId,
        old: Option<String>,
        new: Option<&str>,
        write: impl std::future::Future<Output = ApiResult<T>>,
    ) -> ApiResult<T> {
        let change = match (old, new) {
            (Some(old), Some(new)) if normalise_email(&old) != normalise_email(new) => {
                self.rename(&old, new, id).await?;
                Some((old, new))
            }
            _ => None,
        };
        let result = write.await;
        if let Some((old, new)) = change {
            let stale = if result.is_ok() { old.as_str() } else { new };
            self.release(stale, id).await?;
        }
        result
    }

    /// Frees `email` if `id` holds it (an account deleted, or an email
    /// changed).
    pub async fn release(&self, email: &str, id: ObjectId) -> ApiResult<()> {
        self.collection
            .delete_one(doc! {"_id": normalise_email(email), "account_id": id})
            .await?;
        Ok(())
    }

    /// The account holding `email`, if any.
    pub async fn lookup(&self, email: &str) -> ApiResult<Option<(ObjectId, Role)>> {
        let record = self
            .collection
            .find_one(doc! {"_id": normalise_email(email)})
            .await?;
        Ok(record.and_then(|r| Some((r.get_object_id("account_id").ok()?, kind_of(&r)))))
    }

    /// The account of `email` if `password` is its password.
    async fn verify(&self, email: &str, password: &str) -> ApiResult<Option<(ObjectId, Role)>> {
        let Some(record) = self
            .collection
            .find_one(doc! {"_id": normalise_email(email)})
            .await?
        else {
            // Spend the same time as a wrong password, so that a login does
            // not tell which emails are registered.
            let _ = verify_password(password.to_owned(), dummy_hash()).await;
            return Ok(None);
        };
        let hash = record
            .get_str("password_hash")
            .unwrap_or_default()
            .to_owned();
        if !verify_password(password.to_owned(), hash).await {
            return Ok(None);
        }
        let id = record
            .get_object_id("account_id")
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("account record: {e}")))?;
        Ok(Some((id, kind_of(&record))))
    }
}

/// An Argon2id hash of a random password, verified against when an email
/// is unknown.
fn dummy_hash() -> String {
    static HASH: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let salt = new_salt();
        argon2::Argon2::default()
            .hash_password(salt.as_str().as_bytes(), &salt)
            .map(|h| h.to_string())
            .unwrap_or_default()
    });
    HASH.clone()
}

fn kind_of(record: &Document) -> Role {
    match record.get_str("kind") {
        Ok("supplier") => Role::Supplier,
        _ => Role::User,
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::User => "user",
        Role::Supplier => "supplier",
        Role::Admin => "admin",
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    #[schema(max_length = 254)]
    pub email: String,
    #[schema(max_length = 128)]
    pub password: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenResponse {
    /// Send as `Authorization: Bearer <access_token>`.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the token expires.
    pub expires_in: u64,
    /// The account (a user's or a supplier's id).
    pub account_id: String,
    pub role: Role,
}

pub fn router() -> Router<AppState> {
    Router::new().route("/auth/login", post(login))
}

#[utoipa::path(post, path = "/auth/login", tag = "auth", request_body = Login, responses((status = 200, description = "a token for the account", body = TokenResponse), (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
pub async fn login(
    State(app): State<AppState>,
    Valid(req): Valid<Login>,
) -> ApiResult<Json<TokenResponse>> {
    let Some((id, kind)) = app.accounts.verify(&req.email, &req.password).await? else {
        return Err(ApiError::Unauthorized("wrong email or password".into()));
    };
    let role = app.auth.role_of(kind, &normalise_email(&req.email));
    let (access_token, expires_in) = app.auth.issue(id, role);
    Ok(Json(TokenResponse {
        access_token,
        token_type: "Bearer".into(),
        expires_in,
        account_id: id.to_hex(),
        role,
    }))
}

/// The shared handle to [`Auth`].
pub type SharedAuth = Arc<Auth>;
