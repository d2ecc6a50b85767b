//! Image-to-video conditioning: the input images ([`input`]) and what the sampling loop does
//! with their encodings ([`latent`]). The networks that encode them (the VAE encoder, CLIP's
//! vision tower) are loaded and run by the stages ([`crate::stages::encode_images`]); which
//! conditioning a model takes is its family's [`ImageInput`](crate::family::ImageInput).

pub mod input;
pub mod latent;

pub use input::{
    fit_image, image_tensor, read_image, video_size_for_image, ImageRecord, InputImage,
};
pub use latent::{ImageCondition, LatentCondition};
