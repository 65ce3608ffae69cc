use std::fmt;
use std::str::FromStr;

/// One of the five domain topics. The topic of an event is the part of its
/// event type before the first `.`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topic {
    User,
    Supplier,
    Product,
    Order,
    Post,
}

impl Topic {
    /// All topics, in the order the reference design lists its consumers.
    pub const ALL: [Topic; 5] = [
        Topic::User,
        Topic::Supplier,
        Topic::Product,
        Topic::Order,
        Topic::Post,
    ];

    /// The Kafka topic name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Topic::User => "user",
            Topic::Supplier => "supplier",
            Topic::Product => "product",
            Topic::Order => "order",
            Topic::Post => "post",
        }
    }

    /// The dead-letter topic for permanently failing messages of this topic.
    pub fn dlq(self) -> String {
        format!("dlq.{}", self.as_str())
    }

    /// The event types published on this topic.
    pub fn event_types(self) -> impl Iterator<Item = EventType> {
        EventType::ALL
            .into_iter()
            .filter(move |t| t.topic() == self)
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A topic name that is not one of the five.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown topic {0:?} (expected one of user, supplier, product, order, post)")]
pub struct UnknownTopic(pub String);

impl FromStr for Topic {
    type Err = UnknownTopic;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Topic::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownTopic(s.to_owned()))
    }
}

macro_rules! event_types {
    ($($variant:ident => $name:literal, $topic:ident;)*) => {
        /// Every domain event the platform emits.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum EventType {
            $($variant,)*
        }

        impl EventType {
            /// All event types, grouped by topic.
            pub const ALL: [EventType; [$(EventType::$variant),*].len()] = [$(EventType::$variant),*];

            /// The wire name, e.g. `"order.created"`.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(EventType::$variant => $name,)*
                }
            }

            /// The topic the event is published on.
            pub const fn topic(self) -> Topic {
                match self {
                    $(EventType::$variant => Topic::$topic,)*
                }
            }
        }
    };
}

event_types! {
    UserCreated => "user.created", User;
    UserUpdated => "user.updated", User;
    UserDeleted => "user.deleted", User;
    SupplierCreated => "supplier.created", Supplier;
    SupplierUpdated => "supplier.updated", Supplier;
    SupplierDeleted => "supplier.deleted", Supplier;
    ProductCreated => "product.created", Product;
    ProductUpdated => "product.updated", Product;
    ProductPublished => "product.published", Product;
    ProductDiscontinued => "product.discontinued", Product;
    ProductOutOfStock => "product.out_of_stock", Product;
    ProductRestored => "product.restored", Product;
    ProductDeleted => "product.deleted", Product;
    OrderCreated => "order.created", Order;
    OrderCancelled => "order.cancelled", Order;
    OrderShipped => "order.shipped", Order;
    PostCreated => "post.created", Post;
    PostUpdated => "post.updated", Post;
    PostPublished => "post.published", Post;
    PostDeleted => "post.deleted", Post;
}

impl EventType {
    /// Whether the payload is the full document (`model_dump`) rather than the
    /// minimal ids the reference design sends for deletes and cancellations.
    pub const fn carries_full_document(self) -> bool {
        !matches!(
            self,
            EventType::UserDeleted
                | EventType::SupplierDeleted
                | EventType::ProductDeleted
                | EventType::PostDeleted
                | EventType::OrderCancelled
                | EventType::OrderShipped
        )
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event type name that is not one of the twenty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown event type {0:?}")]
pub struct UnknownEventType(pub String);

impl FromStr for EventType {
    type Err = UnknownEventType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownEventType(s.to_owned()))
    }
}

impl serde::Serialize for EventType {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for EventType {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn there_are_twenty_event_types_over_five_topics() {
        assert_eq!(EventType::ALL.len(), 20);
        let per_topic: Vec<usize> = Topic::ALL.iter().map(|t| t.event_types().count()).collect();
        assert_eq!(per_topic, vec![3, 3, 7, 3, 4]);
    }

    #[test]
    fn every_event_type_round_trips_through_its_name() {
        for t in EventType::ALL {
            assert_eq!(t.as_str().parse::<EventType>(), Ok(t));
            assert_eq!(t.to_string(), t.as_str());
        }
    }

    #[test]
    fn the_topic_is_the_part_before_the_first_dot() {
        for t in EventType::ALL {
            let prefix = t.as_str().split('.').next().unwrap();
            assert_eq!(t.topic().as_str(), prefix, "{t}");
            assert_eq!(prefix.parse::<Topic>(), Ok(t.topic()));
        }
        assert_eq!(EventType::ProductOutOfStock.topic(), Topic::Product);
        assert_eq!(EventType::OrderShipped.topic(), Topic::Order);
    }

    #[test]
    fn unknown_names_are_a_clear_error_not_a_panic() {
        let err = "order.refunded".parse::<EventType>().unwrap_err();
        assert_eq!(err.to_string(), "unknown event type \"order.refunded\"");
        assert!("".parse::<EventType>().is_err());
        assert!("ORDER.CREATED".parse::<EventType>().is_err());
        let err = "invoice".parse::<Topic>().unwrap_err();
        assert!(err.to_string().contains("invoice"));
    }

    #[test]
    fn dead_letter_topics_are_prefixed() {
        assert_eq!(Topic::Order.dlq(), "dlq.order");
    }

    #[test]
    fn deletes_and_cancellations_carry_minimal_payloads() {
        let minimal: Vec<&str> = EventType::ALL
            .iter()
            .filter(|t| !t.carries_full_document())
            .map(|t| t.as_str())
            .collect();
        assert_eq!(
            minimal,
            vec![
                "user.deleted",
                "supplier.deleted",
                "product.deleted",
                "order.cancelled",
                "order.shipped",
                "post.deleted"
            ]
        );
    }
}
