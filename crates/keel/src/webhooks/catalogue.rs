//! Shop catalogues kept searchable: Shopify `products/create|update|delete`
//! and WooCommerce `product.created|updated|restored|deleted` deliveries
//! become one document per product (title, description as text, price and
//! variants, the product's URL), applied through the queue like any
//! document event, so the newest event wins. A product that is not for sale
//! (Shopify `draft`/`archived`, WooCommerce anything but `publish`) is
//! removed from the knowledge base until it is.

use serde_json::{Map, Value, json};

use super::presets::Verification;
use crate::knowledge::documents::DocumentInput;

/// What a catalogue delivery does to the tenant's documents.
pub enum CatalogueChange {
    Upsert(DocumentInput),
    Delete(String),
}

/// Variants listed per product: enough for prices and options, bounded so
/// the metadata stays small.
const MAX_VARIANTS: usize = 50;
const MAX_TITLE_CHARS: usize = 500;

/// The change a delivery makes, if it is a product event of a shop preset;
/// `Err` names what is missing from the product.
pub fn change(
    verification: Verification,
    event_type: &str,
    payload: &Value,
) -> Option<Result<CatalogueChange, String>> {
    match (verification, event_type) {
        (Verification::Shopify, "products/create" | "products/update") => Some(
            shopify_product(payload).map(|product| match product.for_sale {
                true => CatalogueChange::Upsert(product.document),
                false => CatalogueChange::Delete(product.document.id),
            }),
        ),
        (Verification::Shopify, "products/delete") => {
            Some(shopify_id(payload).map(CatalogueChange::Delete))
        }
        (Verification::Woocommerce, "product.created" | "product.updated" | "product.restored") => {
            Some(
                woocommerce_product(payload).map(|product| match product.for_sale {
                    true => CatalogueChange::Upsert(product.document),
                    false => CatalogueChange::Delete(product.document.id),
                }),
            )
        }
        (Verification::Woocommerce, "product.deleted") => {
            Some(woocommerce_id(payload).map(CatalogueChange::Delete))
        }
        _ => None,
    }
}

struct Product {
    document: DocumentInput,
    for_sale: bool,
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

/// A product id as text: shops send numbers (and some plugins strings).
fn id_text(value: &Value) -> Option<String> {
    match value {
        Value::Number(number) => Some(number.to_string()),
        Value::String(text) if !text.is_empty() && text.len() <= 64 => Some(text.clone()),
        _ => None,
    }
}

/// `shopify/{shop}/products/{id}`: a tenant may connect several shops.
fn shopify_id(payload: &Value) -> Result<String, String> {
    let id = id_text(&payload["data"]["id"]).ok_or("the product has no `id`")?;
    Ok(format!("shopify/{}/products/{id}", text(&payload["shop"])))
}

fn shopify_product(payload: &Value) -> Result<Product, String> {
    let id = shopify_id(payload)?;
    let product = &payload["data"];
    let shop = text(&payload["shop"]);
    let variants: Vec<Value> = product["variants"]
        .as_array()
        .map(|variants| {
            variants
                .iter()
                .take(MAX_VARIANTS)
                .map(|v| json!({"title": v["title"], "price": v["price"], "sku": v["sku"]}))
                .collect()
        })
        .unwrap_or_default();
    let price = variants
        .first()
        .map(|v| v["price"].clone())
        .unwrap_or(Value::Null);
    let handle = text(&product["handle"]);
    let url = (!shop.is_empty() && !handle.is_empty())
        .then(|| format!("https://{shop}/products/{handle}"));
    let mut metadata = Map::new();
    metadata.insert("source".into(), json!("shopify"));
    metadata.insert("shop".into(), json!(shop));
    metadata.insert("product_id".into(), product["id"].clone());
    for field in ["handle", "vendor", "product_type", "tags", "status"] {
        if !product[field].is_null() {
            metadata.insert(field.into(), product[field].clone());
        }
    }
    metadata.insert("price".into(), price.clone());
    metadata.insert("variants".into(), Value::Array(variants.clone()));
    if let Some(url) = &url {
        metadata.insert("url".into(), json!(url));
    }
    let document = document(
        id,
        text(&product["title"]),
        &[text(&product["body_html"])],
        &price,
        &variants,
        metadata,
        url,
    )?;
    let status = text(&product["status"]);
    Ok(Product {
        document,
        for_sale: status.is_empty() || status == "active",
    })
}

/// `woocommerce/{site host}/products/{id}`.
fn woocommerce_id(payload: &Value) -> Result<String, String> {
    let id = id_text(&payload["data"]["id"]).ok_or("the product has no `id`")?;
    let site = url::Url::parse(text(&payload["source"]))
        .ok()
        .and_then(|url| url.host_str().map(str::to_owned))
        .unwrap_or_default();
    Ok(format!("woocommerce/{site}/products/{id}"))
}

fn woocommerce_product(payload: &Value) -> Result<Product, String> {
    let id = woocommerce_id(payload)?;
    let product = &payload["data"];
    let mut metadata = Map::new();
    metadata.insert("source".into(), json!("woocommerce"));
    metadata.insert("site".into(), payload["source"].clone());
    metadata.insert("product_id".into(), product["id"].clone());
    for field in [
        "sku",
        "price",
        "regular_price",
        "sale_price",
        "status",
        "type",
    ] {
        if !product[field].is_null() {
            metadata.insert(field.into(), product[field].clone());
        }
    }
    let variations: Vec<Value> = product["variations"]
        .as_array()
        .map(|ids| ids.iter().take(MAX_VARIANTS).cloned().collect())
        .unwrap_or_default();
    metadata.insert("variations".into(), Value::Array(variations));
    let url = product["permalink"]
        .as_str()
        .filter(|u| u.starts_with("http"))
        .map(str::to_owned);
    if let Some(url) = &url {
        metadata.insert("url".into(), json!(url));
    }
    let document = document(
        id,
        text(&product["name"]),
        &[
            text(&product["short_description"]),
            text(&product["description"]),
        ],
        &product["price"],
        &[],
        metadata,
        url,
    )?;
    let status = text(&product["status"]);
    Ok(Product {
        document,
        for_sale: status.is_empty() || status == "publish",
    })
}

/// The product as a document: its title, its descriptions as text, its
/// price and each variant's.
fn document(
    id: String,
    title: &str,
    descriptions: &[&str],
    price: &Value,
    variants: &[Value],
    metadata: Map<String, Value>,
    source_url: Option<String>,
) -> Result<DocumentInput, String> {
    if title.trim().is_empty() {
        return Err("the product has no title".into());
    }
    let mut content = vec![title.trim().to_owned()];
    content.extend(
        descriptions
            .iter()
            .map(|html| html_text(html))
            .filter(|t| !t.is_empty()),
    );
    if let Some(price) = price_text(price) {
        content.push(format!("Price: {price}"));
    }
    for variant in variants {
        let name = text(&variant["title"]);
        if let (false, Some(price)) = (
            name.is_empty() || name == "Default Title",
            price_text(&variant["price"]),
        ) {
            content.push(format!("{name}: {price}"));
        }
    }
    Ok(DocumentInput {
        id,
        title: title.trim().chars().take(MAX_TITLE_CHARS).collect(),
        content: content.join("\n\n"),
        metadata: Some(Value::Object(metadata)),
        source_url,
    })
}

fn price_text(price: &Value) -> Option<String> {
    match price {
        Value::String(text) if !text.is_empty() => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

/// Shop descriptions are HTML: the text a customer reads, with block ends
/// as line breaks and the common entities decoded.
fn html_text(html: &str) -> String {
    let mut text = String::with_capacity(html.len());
    let mut rest = html;
    while let Some(start) = rest.find('<') {
        text.push_str(&rest[..start]);
        let Some(end) = rest[start..].find('>') else {
            rest = "";
            break;
        };
        let tag = rest[start + 1..start + end]
            .trim_start_matches('/')
            .to_ascii_lowercase();
        let name = tag
            .split(|c: char| c.is_whitespace() || c == '/')
            .next()
            .unwrap_or("");
        if matches!(
            name,
            "br" | "p" | "div" | "li" | "h1" | "h2" | "h3" | "h4" | "tr"
        ) {
            text.push('\n');
        }
        rest = &rest[start + end + 1..];
    }
    text.push_str(rest);
    let text = text
        .replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#039;", "'")
        .replace("&amp;", "&");
    text.lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shopify(topic: &str, product: Value) -> Option<Result<CatalogueChange, String>> {
        let payload =
            json!({"shop": "tofu.myshopify.com", "api_version": "2026-10", "data": product});
        change(Verification::Shopify, topic, &payload)
    }

    #[test]
    fn a_shopify_product_becomes_a_searchable_document() {
        let product = json!({
            "id": 632910392, "title": "Tofu bowl", "handle": "tofu-bowl", "status": "active",
            "body_html": "<p>Silken tofu &amp; rice.</p><ul><li>Vegan</li><li>Gluten-free</li></ul>",
            "variants": [{"title": "Small", "price": "9.00", "sku": "TB-S"},
                         {"title": "Large", "price": "12.50", "sku": "TB-L"}]
        });
        let Some(Ok(CatalogueChange::Upsert(document))) = shopify("products/update", product)
        else {
            panic!("an upsert");
        };
        assert_eq!(document.id, "shopify/tofu.myshopify.com/products/632910392");
        assert_eq!(document.title, "Tofu bowl");
        assert_eq!(
            document.content,
            "Tofu bowl\n\nSilken tofu & rice.\nVegan\nGluten-free\n\nPrice: 9.00\n\nSmall: 9.00\n\nLarge: 12.50"
        );
        assert_eq!(
            document.source_url.as_deref(),
            Some("https://tofu.myshopify.com/products/tofu-bowl")
        );
        let metadata = document.metadata.unwrap();
        assert_eq!(metadata["price"], "9.00");
        assert_eq!(metadata["variants"][1]["sku"], "TB-L");
    }

    #[test]
    fn products_leave_the_knowledge_base_when_deleted_or_not_for_sale() {
        let id = "shopify/tofu.myshopify.com/products/7";
        // (topic, product, reason)
        let cases = [
            ("products/delete", json!({"id": 7}), "deleted"),
            (
                "products/update",
                json!({"id": 7, "title": "Tofu", "status": "draft"}),
                "back to draft",
            ),
            (
                "products/update",
                json!({"id": 7, "title": "Tofu", "status": "archived"}),
                "archived",
            ),
        ];
        for (topic, product, reason) in cases {
            assert!(
                matches!(shopify(topic, product), Some(Ok(CatalogueChange::Delete(d))) if d == id),
                "{reason}"
            );
        }
        assert!(
            shopify("orders/create", json!({"id": 1})).is_none(),
            "not a product event"
        );
        assert!(
            change(
                Verification::Standard,
                "products/update",
                &json!({"data": {"id": 1}})
            )
            .is_none(),
            "only a Shopify endpoint's products"
        );
        assert!(matches!(
            shopify("products/update", json!({"id": 7})),
            Some(Err(_))
        ));
    }

    #[test]
    fn a_woocommerce_product_becomes_a_document_named_by_its_site() {
        let payload = json!({"source": "https://tofu.example/", "data": {
            "id": 19, "name": "Tofu bowl", "status": "publish", "price": "9.00", "sku": "TB",
            "permalink": "https://tofu.example/product/tofu-bowl/",
            "short_description": "<p>Vegan.</p>", "description": "<p>Silken tofu&nbsp;and rice.</p>"
        }});
        let Some(Ok(CatalogueChange::Upsert(document))) =
            change(Verification::Woocommerce, "product.updated", &payload)
        else {
            panic!("an upsert");
        };
        assert_eq!(document.id, "woocommerce/tofu.example/products/19");
        assert_eq!(
            document.content,
            "Tofu bowl\n\nVegan.\n\nSilken tofu and rice.\n\nPrice: 9.00"
        );
        let deleted = change(
            Verification::Woocommerce,
            "product.deleted",
            &json!({"source": "https://tofu.example/", "data": {"id": 19}}),
        );
        assert!(matches!(deleted, Some(Ok(CatalogueChange::Delete(d))) if d == document.id));
    }
}
