//! Large futures put on the heap without first being built on the stack and copied.
//!
//! Runs on whichever thread calls it; owns nothing. `Box::pin(f(args))` builds the whole
//! future (a connection's or a stream's state machine, 3 to 4 KiB) on the stack, allocates,
//! then copies all of it, though only the arguments are set before its first poll. Allocating
//! first lets the compiler build the future where it will live: the copy, a `memmove` of a few
//! KiB per connection and per HTTP/2 stream, goes.

use std::future::Future;
use std::pin::Pin;

/// The future `make` returns, pinned on the heap. `make` runs after the allocation, so the
/// future is written into it directly.
#[inline(always)]
pub fn pinned<F: Future>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    let mut slot = Box::<F>::new_uninit();
    slot.write(make());
    // SAFETY: `write` just initialised the slot.
    Box::into_pin(unsafe { slot.assume_init() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    #[test]
    fn a_boxed_future_runs_to_its_output_and_a_dropped_one_drops_its_state() {
        let state = Rc::new(());
        let held = state.clone();
        let fut = pinned(|| async move {
            let _held = held;
            [7u8; 4096].iter().map(|&b| b as u32).sum::<u32>()
        });
        assert_eq!(Rc::strong_count(&state), 2);
        drop(fut);
        assert_eq!(
            Rc::strong_count(&state),
            1,
            "dropping the unpolled future drops its state"
        );
        let out = run_ready(pinned(|| async { 40 + 2 }));
        assert_eq!(out, 42);
    }

    /// Polls a future that never waits to its end.
    fn run_ready<F: Future>(mut f: Pin<Box<F>>) -> F::Output {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("the future waited"),
        }
    }
}
