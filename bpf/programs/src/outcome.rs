//! Results of the non-inlined steps, typed.
//!
//! A function that is not inlined returns its result in one register, and a `Result` whose
//! variants do not fill the same bits reaches the verifier partly undefined (an `Option<u32>`
//! or a `bool` would). So each result below crosses the call as one full-width integer, private
//! to its type, and the caller reads it as what it means (`get`, `translated`): no caller
//! compares against a magic number, and the instructions are those of the plain integer.

/// A pod's address (network order) found by a translation, or none. 0.0.0.0 is never a pod's
/// address, so it stands for none.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct MaybeAddr(u32);

impl MaybeAddr {
    pub const NONE: Self = MaybeAddr(0);

    #[inline(always)]
    pub fn some(addr_be: u32) -> Self {
        MaybeAddr(addr_be)
    }

    #[inline(always)]
    pub fn get(self) -> Option<u32> {
        if self.0 == 0 {
            None
        } else {
            Some(self.0)
        }
    }
}

/// Whether a packet was translated.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct Translated(u32);

impl Translated {
    pub const NO: Self = Translated(0);
    pub const YES: Self = Translated(1);

    #[inline(always)]
    pub fn translated(self) -> bool {
        self.0 != 0
    }
}

/// The tc action a step decided on, or none (the caller goes on). The stand-in for none is no
/// tc action.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct MaybeAction(i32);

impl MaybeAction {
    pub const NONE: Self = MaybeAction(-0x7e1);

    #[inline(always)]
    pub fn some(action: i32) -> Self {
        MaybeAction(action)
    }

    #[inline(always)]
    pub fn get(self) -> Option<i32> {
        if self.0 == Self::NONE.0 {
            None
        } else {
            Some(self.0)
        }
    }
}
