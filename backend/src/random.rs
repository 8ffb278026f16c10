//! Randomness from the OS (getrandom(2), through ring): tokens, session and
//! migration ids, image identities.

use ring::rand::{SecureRandom, SystemRandom};

/// Fills `bytes` from the OS's random source.
pub fn fill(bytes: &mut [u8]) -> std::io::Result<()> {
    SystemRandom::new()
        .fill(bytes)
        .map_err(|_| std::io::Error::other("the OS's random source failed"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn two_draws_differ() {
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        super::fill(&mut a).unwrap();
        super::fill(&mut b).unwrap();
        assert_ne!(a, b);
        assert_ne!(a, [0u8; 32]);
    }
}
