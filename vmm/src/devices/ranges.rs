//! What the port bus and the MMIO bus share: devices by non-overlapping
//! address range, each named for error messages, looked up by the address
//! of an access.

/// Why a range could not be added.
pub(crate) enum RangeError {
    /// The range is empty or ends past the bus's last address.
    BadRange,
    /// The range overlaps the named device's.
    Overlap(String),
}

struct Slot<D: ?Sized> {
    base: u64,
    len: u64,
    name: String,
    device: Box<D>,
}

impl<D: ?Sized> Slot<D> {
    /// Whether `address` is inside (`len` >= 1 and `base + len` fit, as
    /// checked at insertion).
    fn contains(&self, address: u64) -> bool {
        address >= self.base && address - self.base < self.len
    }
}

/// Devices of type `D` by address range.
pub(crate) struct Ranges<D: ?Sized> {
    slots: Vec<Slot<D>>,
}

impl<D: ?Sized> Default for Ranges<D> {
    fn default() -> Self {
        Ranges { slots: Vec::new() }
    }
}

impl<D: ?Sized> Ranges<D> {
    /// Places `device` at `base .. base + len`, which must end at or before
    /// `end_of_bus`.
    pub(crate) fn insert(
        &mut self,
        name: &str,
        base: u64,
        len: u64,
        end_of_bus: u64,
        device: Box<D>,
    ) -> Result<(), RangeError> {
        let end = match base.checked_add(len) {
            Some(end) if len > 0 && end <= end_of_bus => end,
            _ => return Err(RangeError::BadRange),
        };
        if let Some(other) = self
            .slots
            .iter()
            .find(|s| s.base < end && base < s.base + s.len)
        {
            return Err(RangeError::Overlap(other.name.clone()));
        }
        self.slots.push(Slot {
            base,
            len,
            name: name.to_string(),
            device,
        });
        Ok(())
    }

    /// The device whose range holds `first ..= last`, and the offset of
    /// `first` into it.
    pub(crate) fn find(&mut self, first: u64, last: u64) -> Option<(&mut D, u64)> {
        self.slots
            .iter_mut()
            .find(|s| s.contains(first) && s.contains(last))
            .map(|s| (s.device.as_mut(), first - s.base))
    }
}
