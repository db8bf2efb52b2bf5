//! The io_uring worker loop, driven by hand with the `io-uring` crate
//! (issue #11): one ring and one single-threaded executor per worker thread.
//!
//! One loop turn: poll every task that was woken, fire the timers that are
//! due, then one `io_uring_enter` that submits every queued operation and,
//! when nothing is runnable, waits for the first completion or the nearest
//! timer (the timeout rides on the same call, `IORING_ENTER_EXT_ARG`), then
//! reap every completion. The ring is set up `SINGLE_ISSUER | DEFER_TASKRUN`
//! (falling back to `COOP_TASKRUN`, then to none, on older kernels): the
//! kernel runs completion work only inside that `io_uring_enter`, never on
//! return from an interrupt.
//!
//! Operations are futures over owned data ([`submit`]): the buffer or
//! address an operation points into moves into the future and comes back
//! with the result. A future dropped before its completion leaves that data
//! with the driver, which cancels the operation and frees the data only
//! when the kernel has answered, so the kernel never writes into freed
//! memory.
//!
//! Other threads (the control thread's phase changes) wake tasks through a
//! queue and an eventfd that the ring always has a read armed on.
//!
//! Everything the relay needs from a runtime beyond I/O (spawning, sleeping,
//! timeouts) goes through [`crate::rt`], which picks this loop or tokio's.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types, IoUring};

/// Submission queue entries per worker ring; the completion queue has four
/// times as many (and the kernel keeps overflow beyond that).
const RING_ENTRIES: u32 = 1024;
/// `IORING_ENTER_GETEVENTS`: run deferred completion work and post it.
const ENTER_GETEVENTS: u32 = 1;
/// user_data of the eventfd read that carries wakes from other threads.
const EVENTFD_TAG: u64 = u64::MAX;
/// user_data of cancel requests, whose own completions are not awaited.
const CANCEL_TAG: u64 = u64::MAX - 1;
/// Task index of the future given to [`block_on`].
const MAIN: usize = usize::MAX;
/// Busy turns (something runnable, nothing to submit) between two
/// `io_uring_enter` calls that collect completions anyway.
const MAX_TURNS_WITHOUT_ENTER: u32 = 16;
/// At exit, how long to wait for the kernel to answer cancelled operations.
const EXIT_CANCEL_WAIT: Duration = Duration::from_millis(200);
/// Slots in each ring's table of registered files (at most the
/// `RLIMIT_NOFILE` soft limit). Sockets beyond it are named by descriptor.
const FILE_SLOTS: u32 = 4096;

static NEXT_DRIVER_ID: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    static CURRENT: RefCell<Option<Rc<Driver>>> = const { RefCell::new(None) };
    /// Id of the driver running on this thread; 0 when none.
    static CURRENT_ID: Cell<usize> = const { Cell::new(0) };
}

/// Whether this thread runs an io_uring worker loop.
pub fn is_current() -> bool {
    CURRENT_ID.try_with(|id| id.get() != 0).unwrap_or(false)
}

fn with<R>(f: impl FnOnce(&Driver) -> R) -> R {
    CURRENT.with(|c| f(c.borrow().as_ref().expect("io_uring operation outside an io_uring worker loop")))
}

fn try_with<R>(f: impl FnOnce(&Driver) -> R) -> Option<R> {
    CURRENT.try_with(|c| c.try_borrow().ok()?.as_ref().map(|d| f(d))).ok().flatten()
}

/// Runs `fut` to completion on this thread, with a new ring; tasks spawned
/// with [`spawn`] run beside it and are dropped when it returns.
pub fn block_on<F: Future>(fut: F) -> io::Result<F::Output> {
    if is_current() {
        return Err(io::Error::other("an io_uring loop already runs on this thread"));
    }
    let driver = Rc::new(Driver::new()?);
    CURRENT.with(|c| *c.borrow_mut() = Some(driver.clone()));
    CURRENT_ID.with(|id| id.set(driver.id));
    let out = driver.run(fut);
    driver.shut_down();
    CURRENT_ID.with(|id| id.set(0));
    CURRENT.with(|c| c.borrow_mut().take());
    Ok(out)
}

/// A named set of setup flags.
type SetupAttempt = (&'static str, fn(&mut io_uring::Builder));

/// Builds the ring with the best setup flags the kernel takes.
fn build_ring() -> io::Result<(IoUring, &'static str)> {
    let cq = RING_ENTRIES * 4;
    let attempts: [SetupAttempt; 3] = [
        ("single_issuer+defer_taskrun", |b| {
            b.setup_single_issuer().setup_defer_taskrun();
        }),
        ("coop_taskrun", |b| {
            b.setup_coop_taskrun();
        }),
        ("plain", |_| {}),
    ];
    let mut last = None;
    for (name, set) in attempts {
        let mut b = IoUring::builder();
        b.setup_cqsize(cq).setup_clamp();
        set(&mut b);
        match b.build(RING_ENTRIES) {
            Ok(ring) if !ring.params().is_feature_ext_arg() => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "this kernel's io_uring has no timed waits (IORING_FEAT_EXT_ARG, Linux 5.11)",
                ))
            }
            Ok(ring) => return Ok((ring, name)),
            // EINVAL: a flag this kernel does not know; try fewer.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.expect("at least one attempt"))
}

struct TaskSlot {
    gen: u32,
    future: Option<Pin<Box<dyn Future<Output = ()>>>>,
    handle: Option<(Arc<WakeHandle>, Waker)>,
}

/// What other threads need to wake a task of this driver.
struct Shared {
    remote: Mutex<Vec<(usize, u32)>>,
    notified: AtomicBool,
    /// Owned here, not by the driver: a waker that outlives the driver
    /// still writes to this eventfd, never to a reused descriptor number.
    eventfd: OwnedFd,
}

struct WakeHandle {
    driver: usize,
    index: usize,
    gen: u32,
    queued: AtomicBool,
    shared: Arc<Shared>,
}

impl Wake for WakeHandle {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.queued.swap(true, Ordering::AcqRel) {
            return;
        }
        let here = CURRENT_ID.try_with(|id| id.get() == self.driver).unwrap_or(false);
        if here && try_with(|d| d.schedule(self.index, self.gen)).is_some() {
            return;
        }
        self.shared.remote.lock().unwrap_or_else(|p| p.into_inner()).push((self.index, self.gen));
        if !self.shared.notified.swap(true, Ordering::AcqRel) {
            let one = 1u64;
            // SAFETY: writes 8 bytes from a live u64 to the eventfd this
            // handle keeps open; with the driver gone, nobody reads it.
            unsafe { libc::write(self.shared.eventfd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
    }
}

enum OpState {
    /// In flight; the future waits.
    Pending,
    /// Answered: result and CQE flags, for the future to take.
    Done(i32, u32),
    /// In flight, future dropped: the data stays until the kernel answers.
    Orphaned,
}

struct OpSlot {
    state: OpState,
    waker: Option<Waker>,
    keep: Option<Box<dyn Any>>,
}

#[derive(Default)]
struct Ops {
    slots: Vec<Option<OpSlot>>,
    free: Vec<usize>,
    in_flight: usize,
}

impl Ops {
    fn insert(&mut self) -> usize {
        self.in_flight += 1;
        let slot = OpSlot { state: OpState::Pending, waker: None, keep: None };
        match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(slot);
                i
            }
            None => {
                self.slots.push(Some(slot));
                self.slots.len() - 1
            }
        }
    }

    fn remove(&mut self, i: usize) -> Option<OpSlot> {
        let slot = self.slots[i].take();
        self.free.push(i);
        slot
    }
}

struct Driver {
    id: usize,
    /// The time at the start of this loop turn: sleeps compare their
    /// deadline with it (a sleep due within the turn fires at the next
    /// one), so polling a timeout reads no clock.
    now: Cell<Instant>,
    ring: RefCell<IoUring>,
    ops: RefCell<Ops>,
    timers: RefCell<BTreeMap<(Instant, u64), Waker>>,
    next_timer: Cell<u64>,
    tasks: RefCell<Vec<TaskSlot>>,
    free_tasks: RefCell<Vec<usize>>,
    run_queue: RefCell<VecDeque<(usize, u32)>>,
    main_woken: Cell<bool>,
    shared: Arc<Shared>,
    /// Where the kernel writes the eventfd's counter. Leaked (8 bytes per
    /// worker thread): the read into it is in flight until the ring closes.
    eventfd_buf: &'static std::cell::UnsafeCell<u64>,
    cqes: RefCell<Vec<(u64, i32, u32)>>,
    files: RefCell<Files>,
}

/// The ring's registered file table: sockets in it are named by slot
/// (`IOSQE_FIXED_FILE`), so the kernel skips the descriptor lookup and its
/// reference count on every operation.
struct Files {
    /// Slots the table has (0: no table on this kernel).
    cap: u32,
    /// Slots never used yet start here.
    next: u32,
    free: Vec<u32>,
}

impl Driver {
    fn new() -> io::Result<Driver> {
        let (ring, setup) = build_ring()?;
        tracing::debug!(setup, entries = RING_ENTRIES, "io_uring ring set up");
        // SAFETY: eventfd returns a new descriptor or -1.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: efd is a fresh descriptor owned by nothing else.
        let eventfd = unsafe { OwnedFd::from_raw_fd(efd) };
        let shared = Arc::new(Shared { remote: Mutex::new(Vec::new()), notified: AtomicBool::new(false), eventfd });
        let slots = file_slots();
        let cap = match ring.submitter().register_files_sparse(slots) {
            Ok(()) => slots,
            Err(e) => {
                tracing::debug!(error = %e, "no registered file table; sockets are named by descriptor");
                0
            }
        };
        let driver = Driver {
            id: NEXT_DRIVER_ID.fetch_add(1, Ordering::Relaxed),
            now: Cell::new(Instant::now()),
            ring: RefCell::new(ring),
            ops: RefCell::new(Ops::default()),
            timers: RefCell::new(BTreeMap::new()),
            next_timer: Cell::new(0),
            tasks: RefCell::new(Vec::new()),
            free_tasks: RefCell::new(Vec::new()),
            run_queue: RefCell::new(VecDeque::new()),
            main_woken: Cell::new(true),
            shared,
            eventfd_buf: Box::leak(Box::new(std::cell::UnsafeCell::new(0))),
            cqes: RefCell::new(Vec::with_capacity(256)),
            files: RefCell::new(Files { cap, next: 0, free: Vec::new() }),
        };
        driver.arm_eventfd();
        Ok(driver)
    }

    fn arm_eventfd(&self) {
        let entry = opcode::Read::new(types::Fd(self.shared.eventfd.as_raw_fd()), self.eventfd_buf.get().cast(), 8)
            .build()
            .user_data(EVENTFD_TAG);
        self.push(&entry);
    }

    /// Queues one submission; when the queue is full, submits what is
    /// queued and collects completions first (the kernel may refuse new
    /// entries while completions wait).
    fn push(&self, entry: &squeue::Entry) {
        loop {
            // SAFETY: every entry points only into memory that stays alive
            // until its completion (owned by an Op future, then by its slot).
            if unsafe { self.ring.borrow_mut().submission().push(entry) }.is_ok() {
                return;
            }
            self.enter(false, None);
            self.reap();
        }
    }

    /// Hands what is queued to the kernel now, without waiting.
    fn submit_now(&self) {
        if let Err(e) = self.ring.borrow_mut().submit() {
            if !matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)) {
                tracing::error!(error = %e, "io_uring submit failed");
            }
        }
    }

    fn schedule(&self, index: usize, gen: u32) {
        if index == MAIN {
            self.main_woken.set(true);
        } else {
            self.run_queue.borrow_mut().push_back((index, gen));
        }
    }

    fn spawn(&self, fut: Pin<Box<dyn Future<Output = ()>>>) {
        let mut tasks = self.tasks.borrow_mut();
        let index = match self.free_tasks.borrow_mut().pop() {
            Some(i) => i,
            None => {
                tasks.push(TaskSlot { gen: 0, future: None, handle: None });
                tasks.len() - 1
            }
        };
        let slot = &mut tasks[index];
        let handle = Arc::new(WakeHandle {
            driver: self.id,
            index,
            gen: slot.gen,
            queued: AtomicBool::new(true),
            shared: self.shared.clone(),
        });
        slot.future = Some(fut);
        slot.handle = Some((handle.clone(), Waker::from(handle)));
        self.run_queue.borrow_mut().push_back((index, slot.gen));
    }

    fn poll_task(&self, index: usize, gen: u32) {
        let (mut fut, waker) = {
            let mut tasks = self.tasks.borrow_mut();
            let slot = &mut tasks[index];
            if slot.gen != gen {
                return;
            }
            match (slot.future.take(), &slot.handle) {
                (Some(f), Some((h, w))) => {
                    // A wake during the poll queues the task again.
                    h.queued.store(false, Ordering::Release);
                    (f, w.clone())
                }
                _ => return,
            }
        };
        let done = fut.as_mut().poll(&mut Context::from_waker(&waker)).is_ready();
        if done {
            {
                let mut tasks = self.tasks.borrow_mut();
                let slot = &mut tasks[index];
                slot.gen = slot.gen.wrapping_add(1);
                slot.handle = None;
            }
            self.free_tasks.borrow_mut().push(index);
            drop(fut);
        } else {
            self.tasks.borrow_mut()[index].future = Some(fut);
        }
    }

    fn run<F: Future>(&self, fut: F) -> F::Output {
        let mut fut = pin!(fut);
        let main = Arc::new(WakeHandle {
            driver: self.id,
            index: MAIN,
            gen: 0,
            queued: AtomicBool::new(false),
            shared: self.shared.clone(),
        });
        let main_waker = Waker::from(main.clone());
        let mut turns_without_enter = 0u32;
        loop {
            self.now.set(Instant::now());
            if self.main_woken.replace(false) {
                main.queued.store(false, Ordering::Release);
                if let Poll::Ready(out) = fut.as_mut().poll(&mut Context::from_waker(&main_waker)) {
                    return out;
                }
            }
            let queued = self.run_queue.borrow().len();
            for _ in 0..queued {
                let next = self.run_queue.borrow_mut().pop_front();
                let Some((index, gen)) = next else { break };
                self.poll_task(index, gen);
            }
            let next_timer = self.fire_timers();
            let runnable = self.main_woken.get() || !self.run_queue.borrow().is_empty();
            if runnable {
                let queued_sqes = self.ring.borrow_mut().submission().len();
                if queued_sqes == 0 && turns_without_enter < MAX_TURNS_WITHOUT_ENTER {
                    turns_without_enter += 1;
                    continue;
                }
            }
            turns_without_enter = 0;
            self.enter(!runnable, next_timer);
            self.reap();
        }
    }

    /// Wakes the timers that are due; returns the nearest one left.
    fn fire_timers(&self) -> Option<Instant> {
        let mut timers = self.timers.borrow_mut();
        let first = *timers.keys().next()?;
        let now = self.now.get();
        if first.0 > now {
            return Some(first.0);
        }
        let mut due = Vec::new();
        while let Some(entry) = timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            due.push(entry.remove());
        }
        let next = timers.keys().next().map(|k| k.0);
        drop(timers);
        for w in due {
            w.wake();
        }
        next
    }

    /// One `io_uring_enter`: submits everything queued and collects what
    /// is done; with `wait`, sleeps until a completion or `until`.
    fn enter(&self, wait: bool, until: Option<Instant>) {
        let mut ring = self.ring.borrow_mut();
        let res = if !wait {
            let to_submit = ring.submission().len() as u32;
            // SAFETY: plain io_uring_enter with no argument structure.
            unsafe { ring.submitter().enter::<libc::sigset_t>(to_submit, 0, ENTER_GETEVENTS, None) }
        } else {
            match until {
                Some(t) => {
                    let left = t.saturating_duration_since(Instant::now());
                    let ts = types::Timespec::new().sec(left.as_secs()).nsec(left.subsec_nanos());
                    let args = types::SubmitArgs::new().timespec(&ts);
                    ring.submitter().submit_with_args(1, &args)
                }
                None => ring.submitter().submit_and_wait(1),
            }
        };
        if let Err(e) = res {
            if !matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR | libc::EAGAIN | libc::EBUSY)) {
                tracing::error!(error = %e, "io_uring_enter failed");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// Hands every completion to its operation.
    fn reap(&self) {
        let mut cqes = self.cqes.borrow_mut();
        {
            let mut ring = self.ring.borrow_mut();
            cqes.extend(ring.completion().map(|c| (c.user_data(), c.result(), c.flags())));
        }
        let mut remote = false;
        for (ud, res, flags) in cqes.drain(..) {
            match ud {
                EVENTFD_TAG => remote = true,
                CANCEL_TAG => {}
                i => self.complete(i as usize, res, flags),
            }
        }
        drop(cqes);
        if remote {
            self.arm_eventfd();
        }
        if self.shared.notified.swap(false, Ordering::AcqRel) || remote {
            let woken = std::mem::take(&mut *self.shared.remote.lock().unwrap_or_else(|p| p.into_inner()));
            for (index, gen) in woken {
                self.schedule(index, gen);
            }
        }
    }

    /// One completion: to the waiting future, or frees an orphan's data.
    fn complete(&self, i: usize, res: i32, flags: u32) {
        let mut ops = self.ops.borrow_mut();
        let Some(slot) = ops.slots.get_mut(i).and_then(|s| s.as_mut()) else { return };
        match slot.state {
            OpState::Pending => {
                slot.state = OpState::Done(res, flags);
                let waker = slot.waker.take();
                ops.in_flight -= 1;
                drop(ops);
                if let Some(w) = waker {
                    w.wake();
                }
            }
            OpState::Orphaned => {
                ops.in_flight -= 1;
                let slot = ops.remove(i);
                drop(ops);
                drop(slot);
            }
            OpState::Done(..) => {}
        }
    }

    /// After the main future: drops every task (their operations are
    /// cancelled), then waits a bounded time for the kernel to answer them.
    fn shut_down(&self) {
        let futures: Vec<_> = self.tasks.borrow_mut().iter_mut().filter_map(|s| s.future.take()).collect();
        drop(futures);
        self.timers.borrow_mut().clear();
        let deadline = Instant::now() + EXIT_CANCEL_WAIT;
        while self.ops.borrow().in_flight > 0 && Instant::now() < deadline {
            self.enter(true, Some((Instant::now() + Duration::from_millis(10)).min(deadline)));
            self.reap();
        }
        let in_flight = self.ops.borrow().in_flight;
        if in_flight > 0 {
            tracing::warn!(operations = in_flight, "io_uring operations still in flight at exit");
        }
    }
}

impl Drop for Driver {
    /// Whatever the kernel has not answered (after `shut_down`, or a panic
    /// that skipped it) keeps its memory: leaked, never freed while the
    /// kernel may still write into it.
    fn drop(&mut self) {
        for slot in self.ops.get_mut().slots.iter_mut().flatten() {
            if matches!(slot.state, OpState::Orphaned | OpState::Pending) {
                std::mem::forget(slot.keep.take());
            }
        }
    }
}

/// The file table's size: [`FILE_SLOTS`], or the `RLIMIT_NOFILE` soft
/// limit if lower (the kernel refuses a larger table).
fn file_slots() -> u32 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit only writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 0;
    }
    limit.rlim_cur.min(FILE_SLOTS as libc::rlim_t) as u32
}

/// Puts `fd` in this thread's ring's file table; returns its slot, or
/// `None` (no loop, no table, table full, or the kernel refused), in
/// which case operations name the descriptor. While registered, the table
/// holds a reference to the socket: closing `fd` does not close it until
/// [`unregister_file`].
pub fn register_file(fd: std::os::fd::RawFd) -> Option<u32> {
    try_with(|d| {
        let mut files = d.files.borrow_mut();
        let slot = match files.free.pop() {
            Some(s) => s,
            None if files.next < files.cap => {
                files.next += 1;
                files.next - 1
            }
            None => return None,
        };
        match d.ring.borrow().submitter().register_files_update(slot, &[fd]) {
            Ok(_) => Some(slot),
            Err(e) => {
                tracing::debug!(error = %e, slot, "registering a socket in the ring's file table failed");
                files.free.push(slot);
                None
            }
        }
    })
    .flatten()
}

/// Empties a slot [`register_file`] gave. Operations already submitted
/// keep the file until they complete; an entry still queued would find the
/// slot empty (so the callers' operations are all answered or submitted
/// first: dropped operations submit their cancellation at once).
pub fn unregister_file(slot: u32) {
    let _ = try_with(|d| {
        let res = d.ring.borrow().submitter().register_files_update(slot, &[-1]);
        match res {
            Ok(_) => d.files.borrow_mut().free.push(slot),
            // The slot stays taken (and the socket open until the ring closes).
            Err(e) => tracing::warn!(error = %e, slot, "emptying a slot of the ring's file table failed"),
        }
    });
}

/// Spawns a task on this thread's loop.
pub fn spawn<F: Future<Output = ()> + 'static>(fut: F) {
    with(|d| d.spawn(Box::pin(fut)));
}

/// One in-flight operation over owned `data` (the memory its entry points
/// into). Resolves to the result, the CQE flags and the data.
pub struct Op<T: 'static> {
    index: usize,
    data: Option<T>,
}

/// Queues `entry` (whose pointers point into `data`) and returns the
/// operation's future. The entry goes to the kernel at the next loop turn.
pub fn submit<T: 'static>(entry: squeue::Entry, data: T) -> Op<T> {
    with(|d| {
        let index = d.ops.borrow_mut().insert();
        d.push(&entry.user_data(index as u64));
        Op { index, data: Some(data) }
    })
}

impl<T: 'static> Op<T> {
    /// Asks the kernel to cancel the operation; it still completes (with
    /// `-ECANCELED`, or with its result if that came first).
    pub fn cancel(&self) {
        with(|d| d.push(&opcode::AsyncCancel::new(self.index as u64).build().user_data(CANCEL_TAG)));
    }
}

impl<T: 'static + Unpin> Future for Op<T> {
    type Output = (i32, u32, T);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let index = self.index;
        let done = with(|d| {
            let mut ops = d.ops.borrow_mut();
            let slot = ops.slots[index].as_mut().expect("a live operation");
            match slot.state {
                OpState::Done(res, flags) => {
                    ops.remove(index);
                    Some((res, flags))
                }
                _ => {
                    match &slot.waker {
                        Some(w) if w.will_wake(cx.waker()) => {}
                        _ => slot.waker = Some(cx.waker().clone()),
                    }
                    None
                }
            }
        });
        match done {
            Some((res, flags)) => Poll::Ready((res, flags, self.data.take().expect("polled after completion"))),
            None => Poll::Pending,
        }
    }
}

impl<T: 'static> Drop for Op<T> {
    fn drop(&mut self) {
        let Some(data) = self.data.take() else { return };
        let index = self.index;
        let mut data = Some(data);
        let handled = try_with(|d| {
            let mut ops = d.ops.borrow_mut();
            let Some(slot) = ops.slots[index].as_mut() else { return };
            match slot.state {
                OpState::Done(..) => {
                    ops.remove(index);
                }
                _ => {
                    slot.state = OpState::Orphaned;
                    slot.waker = None;
                    slot.keep = data.take().map(|v| Box::new(v) as Box<dyn Any>);
                    drop(ops);
                    d.push(&opcode::AsyncCancel::new(index as u64).build().user_data(CANCEL_TAG));
                    // Submitted now: an entry still queued names its socket
                    // by number, and the socket may close (and the number be
                    // reused) before the next loop turn.
                    d.submit_now();
                }
            }
        })
        .is_some();
        if !handled {
            // No loop on this thread any more (a panic unwinding past it):
            // the kernel may still write into this memory, so leak it.
            std::mem::forget(data);
        }
    }
}

/// A point in time this loop wakes a task at.
pub struct Sleep {
    deadline: Instant,
    key: Option<(Instant, u64)>,
}

pub fn sleep_until(deadline: Instant) -> Sleep {
    Sleep { deadline, key: None }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = self.deadline;
        let key = self.key;
        let (ready, key) = with(|d| {
            let mut timers = d.timers.borrow_mut();
            if d.now.get() >= deadline {
                if let Some(key) = key {
                    timers.remove(&key);
                }
                return (true, None);
            }
            let key = key.unwrap_or_else(|| {
                let seq = d.next_timer.get();
                d.next_timer.set(seq + 1);
                (deadline, seq)
            });
            match timers.get_mut(&key) {
                Some(w) if w.will_wake(cx.waker()) => {}
                Some(w) => *w = cx.waker().clone(),
                None => {
                    timers.insert(key, cx.waker().clone());
                }
            }
            (false, Some(key))
        });
        self.key = key;
        if ready {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let _ = try_with(|d| d.timers.borrow_mut().remove(&key));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, RawFd};

    fn socketpair() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: socketpair fills two fresh descriptors on success.
        assert_eq!(
            unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) },
            0
        );
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    async fn recv(fd: RawFd, cap: usize) -> (i32, Vec<u8>) {
        let mut buf = Vec::with_capacity(cap);
        let entry = opcode::Recv::new(types::Fd(fd), buf.as_mut_ptr(), cap as u32).build();
        let (res, _, mut buf) = submit(entry, buf).await;
        if res > 0 {
            unsafe { buf.set_len(res as usize) };
        }
        (res, buf)
    }

    #[test]
    fn spawned_tasks_timers_and_io_run_on_one_ring() {
        let out = block_on(async {
            let (a, b) = socketpair();
            let got = Rc::new(RefCell::new(Vec::new()));
            let g = got.clone();
            let fd = b.as_raw_fd();
            spawn(async move {
                let (res, buf) = recv(fd, 64).await;
                assert_eq!(res, 5);
                g.borrow_mut().extend_from_slice(&buf);
            });
            let t0 = Instant::now();
            sleep_until(Instant::now() + Duration::from_millis(30)).await;
            assert!(t0.elapsed() >= Duration::from_millis(30));
            let msg = b"hello".to_vec();
            let entry = opcode::Send::new(types::Fd(a.as_raw_fd()), msg.as_ptr(), 5).build();
            let (res, _, _) = submit(entry, msg).await;
            assert_eq!(res, 5);
            for _ in 0..100 {
                if !got.borrow().is_empty() {
                    break;
                }
                sleep_until(Instant::now() + Duration::from_millis(1)).await;
            }
            let v = got.borrow().clone();
            drop((a, b));
            v
        })
        .unwrap();
        assert_eq!(out, b"hello");
    }

    #[test]
    fn a_dropped_operation_is_cancelled_and_its_buffer_kept_until_answered() {
        block_on(async {
            let (a, b) = socketpair();
            {
                let read = recv(b.as_raw_fd(), 64);
                let timed = async {
                    tokio::select! {
                        _ = read => panic!("nothing was sent"),
                        _ = sleep_until(Instant::now() + Duration::from_millis(5)) => {}
                    }
                };
                timed.await;
            }
            // The cancelled read took nothing: the next one gets the bytes.
            let msg = b"abc".to_vec();
            let entry = opcode::Send::new(types::Fd(a.as_raw_fd()), msg.as_ptr(), 3).build();
            assert_eq!(submit(entry, msg).await.0, 3);
            let (res, buf) = recv(b.as_raw_fd(), 64).await;
            assert_eq!((res, &buf[..]), (3, &b"abc"[..]));
            assert_eq!(with(|d| d.ops.borrow().in_flight), 0);
        })
        .unwrap();
    }

    #[test]
    fn another_thread_wakes_a_task() {
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            tx.send(7).unwrap();
        });
        let v = block_on(async { rx.await.unwrap() }).unwrap();
        assert_eq!(v, 7);
        t.join().unwrap();
    }

    #[test]
    fn a_waker_that_outlives_its_loop_writes_to_nothing_else() {
        let (tx, rx) = std::sync::mpsc::channel::<Waker>();
        block_on(std::future::poll_fn(|cx| {
            tx.send(cx.waker().clone()).unwrap();
            Poll::Ready(())
        }))
        .unwrap();
        let waker = rx.recv().unwrap();
        // The loop is gone; new descriptors take the lowest free numbers.
        let (a, b) = socketpair();
        waker.wake_by_ref();
        waker.wake();
        let mut buf = Vec::with_capacity(16);
        assert_eq!(crate::io::recv_now(b.as_raw_fd(), &mut buf).unwrap(), None, "no stray bytes on a new socket");
        drop(a);
    }

    #[test]
    fn a_loop_inside_a_loop_is_refused() {
        block_on(async { assert!(block_on(async {}).is_err()) }).unwrap();
    }
}
