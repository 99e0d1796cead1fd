//! The compute backend trait that models are generic over.
