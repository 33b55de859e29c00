//! Images in requests: OpenAI's `image_url` parts (base64 `data:` URLs) and Anthropic's
//! `image` blocks (base64 sources), decoded and laid out by the model's vision projector.
//! The server never fetches a URL: a local server that fetches what a request names can
//! be made to reach the machine's private network.

use std::sync::{Arc, RwLock};

use base64::Engine as _;

use super::errors::ApiError;
use crate::engine::{PreparedImage, Projector};

/// Most images one request may carry: each is resized and held as floats until its job
/// runs.
pub const MAX_IMAGES: usize = 16;

/// An image of a request, still encoded (PNG, JPEG, …), and the field it came from.
pub struct RequestImage {
    pub field: String,
    pub bytes: Vec<u8>,
}

/// Padding optional: clients differ in whether they send it.
const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

impl RequestImage {
    /// An OpenAI image URL: only `data:<type>;base64,<data>` is taken.
    pub fn from_url(url: &str, field: &str) -> Result<RequestImage, ApiError> {
        let Some(rest) = strip_prefix_ignore_case(url.trim_start(), "data:") else {
            let remote = ["http://", "https://"]
                .iter()
                .any(|scheme| strip_prefix_ignore_case(url, scheme).is_some());
            let why = if remote {
                "this server does not fetch images from URLs; send the image inline as a data: URL (data:image/png;base64,...)"
            } else {
                "expected a data: URL (data:image/png;base64,...)"
            };
            return Err(ApiError::field(field, why));
        };
        let (header, data) = rest
            .split_once(',')
            .ok_or_else(|| ApiError::field(field, "a data: URL needs a comma before its data"))?;
        if !header.to_ascii_lowercase().ends_with(";base64") {
            return Err(ApiError::field(
                field,
                "only base64 data: URLs are taken (data:image/png;base64,...)",
            ));
        }
        Self::from_base64(data, field)
    }

    /// Base64 text, as Anthropic's `source.data`.
    pub fn from_base64(data: &str, field: &str) -> Result<RequestImage, ApiError> {
        let compact: String = data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        let bytes = BASE64
            .decode(compact.as_bytes())
            .map_err(|e| ApiError::field(field, format!("the image is not valid base64: {e}")))?;
        if bytes.is_empty() {
            return Err(ApiError::field(field, "the image is empty"));
        }
        Ok(RequestImage {
            field: field.to_owned(),
            bytes,
        })
    }
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &text[prefix.len()..])
}

/// Checks how many images a request carries.
pub fn check_count(images: &[RequestImage]) -> Result<(), ApiError> {
    match images.get(MAX_IMAGES) {
        Some(extra) => Err(ApiError::field(
            &extra.field,
            format!("at most {MAX_IMAGES} images per request"),
        )),
        None => Ok(()),
    }
}

/// Decodes each image and lays it out for the scheduler (off the async threads: this
/// takes a while for a large picture).
pub fn prepare(projector: &RwLock<Projector>, images: Vec<RequestImage>) -> Result<Vec<Arc<PreparedImage>>, ApiError> {
    images
        .into_iter()
        .map(|image| {
            let bitmap = crate::engine::decode_image(&image.bytes, "image")
                .map_err(|e| ApiError::field(&image.field, format!("{e:#}")))?;
            let projector = projector.read().unwrap_or_else(|e| e.into_inner());
            projector
                .prepare_image(&bitmap)
                .map(Arc::new)
                .map_err(|e| ApiError::field(&image.field, format!("{e:#}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_urls_decode_and_other_urls_are_refused() {
        let image = RequestImage::from_url("data:image/png;base64,aGVsbG8=", "f").unwrap();
        assert_eq!(image.bytes, b"hello");
        let unpadded = RequestImage::from_url("DATA:image/png;BASE64,aGVsbG8", "f").unwrap();
        assert_eq!(unpadded.bytes, b"hello");
        let remote = RequestImage::from_url("https://example.com/cat.png", "messages[0].content[1]")
            .err()
            .unwrap();
        assert!(remote.message.contains("does not fetch"), "{}", remote.message);
        assert_eq!(remote.param.as_deref(), Some("messages[0].content[1]"));
        for (url, why) in [
            ("data:image/png,abc", "only base64"),
            ("data:image/png;base64", "comma"),
            ("data:image/png;base64,***", "not valid base64"),
            ("data:image/png;base64,", "empty"),
            ("file:///etc/passwd", "expected a data: URL"),
        ] {
            let error = RequestImage::from_url(url, "f").err().unwrap();
            assert!(error.message.contains(why), "{url}: {}", error.message);
        }
    }

    #[test]
    fn too_many_images_name_the_first_extra_one() {
        let images: Vec<RequestImage> = (0..=MAX_IMAGES)
            .map(|i| RequestImage {
                field: format!("image {i}"),
                bytes: vec![1],
            })
            .collect();
        assert!(check_count(&images[..MAX_IMAGES]).is_ok());
        let error = check_count(&images).unwrap_err();
        assert_eq!(error.param.as_deref(), Some(format!("image {MAX_IMAGES}").as_str()));
    }
}
