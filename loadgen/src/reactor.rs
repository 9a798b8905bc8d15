//! Socket readiness and timers for one generator core: an edge-triggered epoll
//! set and a timer heap, driven by one poller task on the core's glommio
//! executor. glommio still runs the tasks (placement, scheduling,
//! cancellation); this file replaces its network and timer paths.
//!
//! Why not glommio's sockets: glommio 0.9 creates its io_uring rings without
//! IORING_SETUP_COOP_TASKRUN, so every poll completion that lands while the
//! thread is busy is delivered by task_work with a rescheduling IPI. On this
//! (virtualised) machine that cost 1.5 IPIs per pipelined message and 2.9 per
//! unpipelined one — against 0.03 for smtp-source's poll loop — and made the
//! generator slower than the tool it must beat. Readiness through epoll, harvested
//! in batches when the core has nothing else to run, needs no IPI at all.
//!
//! The poller blocks in `epoll_pwait2` only when no task it woke is still
//! waiting to run (each task is wrapped in [`Tracked`], which counts that), and
//! never past the next timer, so blocking the executor thread is safe: nothing
//! else on this core could have run meanwhile.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

/// Set while a task is woken and not yet polled again.
type TaskFlag = Rc<Cell<bool>>;

thread_local! {
    /// The flag of the [`Tracked`] task being polled on this thread.
    static CURRENT_TASK: RefCell<Option<TaskFlag>> = const { RefCell::new(None) };
}

fn current_task() -> Option<TaskFlag> {
    CURRENT_TASK.with(|c| c.borrow().clone())
}

/// A waiting future's waker, with the flag of the task it belongs to.
struct Waiter {
    waker: Waker,
    task: Option<TaskFlag>,
}

impl Waiter {
    fn new(cx: &Context<'_>) -> Waiter {
        Waiter {
            waker: cx.waker().clone(),
            task: current_task(),
        }
    }
}

/// One registered socket.
struct Registration {
    /// Data may be waiting: set by a readable event, cleared when a read
    /// drains the socket. Saves the `recv` that would only say EAGAIN.
    readable: bool,
    /// The peer closed or the socket failed. That state gives no further
    /// edge, so `readable` then stays set: the next read returns 0 or the error.
    hung_up: bool,
    read: Option<Waiter>,
    write: Option<Waiter>,
    /// Bumped on each readable (or error) event.
    read_events: u64,
    /// Bumped on each writable (or error) event.
    write_events: u64,
}

/// The per-core reactor. Single-threaded: shared as `Rc`, never sent.
pub struct Reactor {
    epfd: OwnedFd,
    registrations: RefCell<Vec<Option<Registration>>>,
    free_tokens: RefCell<Vec<usize>>,
    timers: RefCell<BinaryHeap<Reverse<(Instant, u64)>>>,
    timer_waiters: RefCell<HashMap<u64, Waiter>>,
    next_timer_id: Cell<u64>,
    /// Tasks woken by this reactor that have not been polled since.
    pending: Cell<usize>,
    /// Scratch list of waiters to wake after an epoll batch.
    wake_buf: RefCell<Vec<Waiter>>,
    /// `epoll_pwait2` (Linux 5.11) is missing: fall back to millisecond timeouts.
    no_pwait2: Cell<bool>,
}

/// What a socket waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interest {
    Read,
    Write,
}

impl Reactor {
    /// A reactor with its own epoll set.
    ///
    /// # Errors
    /// The error of `epoll_create1`.
    pub fn new() -> io::Result<Rc<Reactor>> {
        // SAFETY: plain syscall; the returned descriptor is checked, then owned.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Rc::new(Reactor {
            // SAFETY: fd is a fresh descriptor that nothing else owns.
            epfd: unsafe { OwnedFd::from_raw_fd(fd) },
            registrations: RefCell::new(Vec::new()),
            free_tokens: RefCell::new(Vec::new()),
            timers: RefCell::new(BinaryHeap::new()),
            timer_waiters: RefCell::new(HashMap::new()),
            next_timer_id: Cell::new(0),
            pending: Cell::new(0),
            wake_buf: RefCell::new(Vec::new()),
            no_pwait2: Cell::new(false),
        }))
    }

    fn wake(&self, w: Waiter) {
        if let Some(flag) = &w.task {
            if !flag.replace(true) {
                self.pending.set(self.pending.get() + 1);
            }
        }
        w.waker.wake();
    }

    fn register(&self, fd: RawFd) -> io::Result<usize> {
        let token = match self.free_tokens.borrow_mut().pop() {
            Some(t) => t,
            None => {
                let mut regs = self.registrations.borrow_mut();
                regs.push(None);
                regs.len() - 1
            }
        };
        self.registrations.borrow_mut()[token] = Some(Registration {
            readable: true,
            hung_up: false,
            read: None,
            write: None,
            read_events: 0,
            write_events: 0,
        });
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            u64: token as u64,
        };
        // SAFETY: both descriptors are open; ev lives for the call.
        if unsafe { libc::epoll_ctl(self.epfd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) } != 0
        {
            let e = io::Error::last_os_error();
            self.release(token);
            return Err(e);
        }
        Ok(token)
    }

    fn release(&self, token: usize) {
        self.registrations.borrow_mut()[token] = None;
        self.free_tokens.borrow_mut().push(token);
    }

    fn deregister(&self, fd: RawFd, token: usize) {
        // SAFETY: removing a descriptor we added; a null event is allowed for DEL.
        unsafe {
            libc::epoll_ctl(
                self.epfd.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                std::ptr::null_mut(),
            );
        }
        self.release(token);
    }

    fn add_timer(&self, at: Instant, w: Waiter) -> u64 {
        let id = self.next_timer_id.get();
        self.next_timer_id.set(id + 1);
        self.timers.borrow_mut().push(Reverse((at, id)));
        self.timer_waiters.borrow_mut().insert(id, w);
        id
    }

    fn cancel_timer(&self, id: u64) {
        // The heap entry stays until it expires; without a waiter it is skipped.
        self.timer_waiters.borrow_mut().remove(&id);
    }

    /// Wakes the waiters of every timer due by `now`; returns the next deadline.
    fn fire_timers(&self, now: Instant) -> Option<Instant> {
        loop {
            let next = self
                .timers
                .borrow()
                .peek()
                .map(|Reverse((at, id))| (*at, *id));
            match next {
                Some((at, id)) if at <= now => {
                    self.timers.borrow_mut().pop();
                    let waiter = self.timer_waiters.borrow_mut().remove(&id);
                    if let Some(w) = waiter {
                        self.wake(w);
                    }
                }
                Some((at, id)) => {
                    if self.timer_waiters.borrow().contains_key(&id) {
                        return Some(at);
                    }
                    // Cancelled: drop it and look further.
                    self.timers.borrow_mut().pop();
                }
                None => return None,
            }
        }
    }

    /// Collects socket events, waiting at most `timeout` (`None`: until one comes).
    fn poll_events(&self, events: &mut [libc::epoll_event], timeout: Option<Duration>) -> usize {
        let n = self.epoll_wait(events, timeout);
        let mut regs = self.registrations.borrow_mut();
        // Wakers are called after the registrations are released; the buffer
        // is kept to avoid an allocation per batch.
        let mut wake = self.wake_buf.take();
        for ev in &events[..n] {
            let Some(Some(reg)) = regs.get_mut(ev.u64 as usize) else {
                continue;
            };
            let flags = ev.events as i32;
            let error = flags & (libc::EPOLLERR | libc::EPOLLHUP) != 0;
            if error || flags & libc::EPOLLRDHUP != 0 {
                reg.hung_up = true;
            }
            if error || flags & (libc::EPOLLIN | libc::EPOLLRDHUP) != 0 {
                reg.readable = true;
                reg.read_events += 1;
                wake.extend(reg.read.take());
            }
            if error || flags & libc::EPOLLOUT != 0 {
                reg.write_events += 1;
                wake.extend(reg.write.take());
            }
        }
        drop(regs);
        for w in wake.drain(..) {
            self.wake(w);
        }
        self.wake_buf.replace(wake);
        n
    }

    fn epoll_wait(&self, events: &mut [libc::epoll_event], timeout: Option<Duration>) -> usize {
        let max = events.len() as libc::c_int;
        let epfd = self.epfd.as_raw_fd();
        let n = if self.no_pwait2.get() {
            let ms = timeout.map_or(-1, |d| {
                // Round up: waking early would only spin.
                libc::c_int::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(libc::c_int::MAX)
            });
            // SAFETY: events is a valid buffer of `max` entries.
            unsafe { libc::epoll_wait(epfd, events.as_mut_ptr(), max, ms) }
        } else {
            let ts = timeout.map(|d| libc::timespec {
                tv_sec: libc::time_t::try_from(d.as_secs()).unwrap_or(libc::time_t::MAX),
                tv_nsec: libc::c_long::from(d.subsec_nanos() as i32),
            });
            let tsp = ts
                .as_ref()
                .map_or(std::ptr::null(), |t| t as *const libc::timespec);
            // SAFETY: events is a valid buffer of `max` entries; tsp is null or
            // points to a timespec that outlives the call.
            let n = unsafe {
                libc::epoll_pwait2(epfd, events.as_mut_ptr(), max, tsp, std::ptr::null())
            };
            if n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) {
                self.no_pwait2.set(true);
                return self.epoll_wait(events, timeout);
            }
            n
        };
        // EINTR (a signal such as Ctrl-C) and other failures just end this wait.
        usize::try_from(n).unwrap_or(0)
    }

    /// Drives the reactor: wakes tasks whose sockets or timers are ready,
    /// yields so they run, and blocks only when none of its tasks is runnable.
    /// Runs until its task is dropped.
    pub async fn run(self: Rc<Self>) {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 512];
        // Let the tasks spawned with this one make their first move (register
        // timers and sockets) before the first wait.
        futures_lite::future::yield_now().await;
        loop {
            let next_timer = self.fire_timers(Instant::now());
            let timeout = if self.pending.get() > 0 {
                Some(Duration::ZERO)
            } else {
                next_timer.map(|t| t.saturating_duration_since(Instant::now()))
            };
            self.poll_events(&mut events, timeout);
            self.fire_timers(Instant::now());
            futures_lite::future::yield_now().await;
        }
    }

    /// A future that completes at `at`.
    pub fn sleep_until(self: &Rc<Self>, at: Instant) -> Sleep {
        Sleep {
            reactor: self.clone(),
            at,
            timer: None,
        }
    }
}

/// Runs a future as a task this reactor can account for; every task on a core
/// that uses the reactor must be wrapped, or the poller may block while it is
/// runnable.
pub struct Tracked<F> {
    fut: Pin<Box<F>>,
    flag: TaskFlag,
    reactor: Rc<Reactor>,
}

impl<F: Future> Tracked<F> {
    /// Wraps `fut`. A new task is runnable until its first poll, so it
    /// counts as woken from the start.
    pub fn new(reactor: &Rc<Reactor>, fut: F) -> Tracked<F> {
        reactor.pending.set(reactor.pending.get() + 1);
        Tracked {
            fut: Box::pin(fut),
            flag: Rc::new(Cell::new(true)),
            reactor: reactor.clone(),
        }
    }
}

impl<F: Future> Future for Tracked<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        if self.flag.replace(false) {
            self.reactor.pending.set(self.reactor.pending.get() - 1);
        }
        let previous = CURRENT_TASK.with(|c| c.replace(Some(self.flag.clone())));
        let out = self.fut.as_mut().poll(cx);
        CURRENT_TASK.with(|c| *c.borrow_mut() = previous);
        out
    }
}

impl<F> Drop for Tracked<F> {
    fn drop(&mut self) {
        // A cancelled task that was woken will never be polled: uncount it.
        if self.flag.replace(false) {
            self.reactor.pending.set(self.reactor.pending.get() - 1);
        }
    }
}

/// A wake-up call between tasks of one core: one task waits, any other
/// notifies. Waking goes through the reactor so the poller knows the waiter
/// is runnable.
#[derive(Default)]
pub struct Notify {
    waiter: RefCell<Option<Waiter>>,
    notified: Cell<bool>,
}

impl Notify {
    /// Wakes the waiter, or lets the next wait return at once.
    pub fn notify(&self, reactor: &Reactor) {
        self.notified.set(true);
        if let Some(w) = self.waiter.take() {
            reactor.wake(w);
        }
    }

    /// Completes once notified (consuming the notification).
    pub fn notified(&self) -> Notified<'_> {
        Notified { notify: self }
    }
}

/// See [`Notify::notified`].
pub struct Notified<'a> {
    notify: &'a Notify,
}

impl Future for Notified<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.notify.notified.replace(false) {
            return Poll::Ready(());
        }
        *self.notify.waiter.borrow_mut() = Some(Waiter::new(cx));
        Poll::Pending
    }
}

/// See [`Reactor::sleep_until`].
pub struct Sleep {
    reactor: Rc<Reactor>,
    at: Instant,
    timer: Option<u64>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.at {
            if let Some(id) = self.timer.take() {
                self.reactor.cancel_timer(id);
            }
            return Poll::Ready(());
        }
        if let Some(id) = self.timer.take() {
            self.reactor.cancel_timer(id);
        }
        let id = self.reactor.add_timer(self.at, Waiter::new(cx));
        self.timer = Some(id);
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(id) = self.timer.take() {
            self.reactor.cancel_timer(id);
        }
    }
}

/// A non-blocking TCP connection registered with a [`Reactor`].
pub struct TcpConn {
    socket: Socket,
    token: usize,
    reactor: Rc<Reactor>,
}

impl TcpConn {
    /// Connects to `addr`, giving up at `deadline`.
    ///
    /// # Errors
    /// The connect error (`ConnectionRefused`, ...), or `TimedOut`.
    pub async fn connect(
        reactor: &Rc<Reactor>,
        addr: SocketAddr,
        deadline: Instant,
    ) -> io::Result<TcpConn> {
        let socket = Socket::new(
            Domain::for_address(addr),
            Type::STREAM.nonblocking().cloexec(),
            Some(Protocol::TCP),
        )?;
        socket.set_nodelay(true)?;
        match socket.connect(&addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        let token = reactor.register(socket.as_raw_fd())?;
        let conn = TcpConn {
            socket,
            token,
            reactor: reactor.clone(),
        };
        // Writable means connected, or failed: SO_ERROR tells which.
        loop {
            if let Some(e) = conn.socket.take_error()? {
                return Err(e);
            }
            match conn.socket.peer_addr() {
                Ok(_) => return Ok(conn),
                Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {}
                Err(e) => return Err(e),
            }
            conn.ready(Interest::Write, deadline).await?;
        }
    }

    /// Reads what is there (at least one byte), `Ok(0)` at end of stream.
    ///
    /// # Errors
    /// The socket error, or `TimedOut` at `deadline`.
    pub async fn read(&self, buf: &mut [u8], deadline: Instant) -> io::Result<usize> {
        loop {
            if !self.readable(None) {
                self.ready(Interest::Read, deadline).await?;
            }
            // SAFETY: buf is valid for writes of buf.len() bytes.
            let n = unsafe {
                libc::recv(
                    self.socket.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n >= 0 {
                // A short read drained the socket (TCP): more data comes with
                // a new edge-triggered event.
                if n > 0 && (n as usize) < buf.len() {
                    self.readable(Some(false));
                }
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock => {
                    self.readable(Some(false));
                }
                io::ErrorKind::Interrupted => {}
                _ => return Err(e),
            }
        }
    }

    /// The socket's readable flag, after setting it to `to` when given.
    fn readable(&self, to: Option<bool>) -> bool {
        let mut regs = self.reactor.registrations.borrow_mut();
        // Registered in connect() and released only on drop: present.
        let reg = regs[self.token].as_mut().expect("registered socket");
        if let Some(v) = to {
            reg.readable = v || reg.hung_up;
        }
        reg.readable
    }

    /// Writes all of `bytes`.
    ///
    /// # Errors
    /// The socket error (a reset peer gives `BrokenPipe`, never SIGPIPE), or
    /// `TimedOut` at `deadline`.
    pub async fn write_all(&self, mut bytes: &[u8], deadline: Instant) -> io::Result<()> {
        while !bytes.is_empty() {
            // SAFETY: bytes is valid for reads of bytes.len() bytes.
            let n = unsafe {
                libc::send(
                    self.socket.as_raw_fd(),
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if n >= 0 {
                bytes = &bytes[n as usize..];
                continue;
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock => self.ready(Interest::Write, deadline).await?,
                io::ErrorKind::Interrupted => {}
                _ => return Err(e),
            }
        }
        Ok(())
    }

    /// Waits for the next event of `interest` on this socket, or `deadline`.
    fn ready(&self, interest: Interest, deadline: Instant) -> Ready<'_> {
        Ready {
            conn: self,
            interest,
            deadline,
            seen: None,
            timer: None,
        }
    }
}

impl Drop for TcpConn {
    fn drop(&mut self) {
        self.reactor.deregister(self.socket.as_raw_fd(), self.token);
    }
}

/// See [`TcpConn::ready`].
struct Ready<'a> {
    conn: &'a TcpConn,
    interest: Interest,
    deadline: Instant,
    /// The event count when the wait began; a change means the event came.
    seen: Option<u64>,
    timer: Option<u64>,
}

impl Future for Ready<'_> {
    type Output = io::Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let reactor = &self.conn.reactor;
        let events = {
            let regs = reactor.registrations.borrow();
            // Registered in connect() and released only on drop: present.
            let reg = regs[self.conn.token].as_ref().expect("registered socket");
            match self.interest {
                Interest::Read => reg.read_events,
                Interest::Write => reg.write_events,
            }
        };
        if let Some(seen) = self.seen {
            if events != seen {
                return Poll::Ready(Ok(()));
            }
            if Instant::now() >= self.deadline {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "timed out")));
            }
        }
        self.seen = Some(events);
        {
            let mut regs = reactor.registrations.borrow_mut();
            let reg = regs[self.conn.token].as_mut().expect("registered socket");
            let slot = match self.interest {
                Interest::Read => &mut reg.read,
                Interest::Write => &mut reg.write,
            };
            *slot = Some(Waiter::new(cx));
        }
        if self.timer.is_none() {
            let id = reactor.add_timer(self.deadline, Waiter::new(cx));
            self.timer = Some(id);
        }
        Poll::Pending
    }
}

impl Drop for Ready<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.timer.take() {
            self.conn.reactor.cancel_timer(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// Runs `test` on a glommio executor with a reactor, as a generator core does.
    fn on_core<F, Fut>(test: F)
    where
        F: FnOnce(Rc<Reactor>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(1 << 20)
            .spawn(move || async move {
                let reactor = Reactor::new().unwrap();
                let poller = glommio::spawn_local(reactor.clone().run());
                Tracked::new(&reactor, test(reactor.clone())).await;
                drop(poller);
            })
            .unwrap()
            .join()
            .unwrap();
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(10)
    }

    #[test]
    fn end_of_stream_right_after_data_is_seen() {
        // Data and FIN arrive together and their event is harvested before the
        // read: the short read must not hide the end of stream.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"220 hello\r\n").unwrap();
        });
        on_core(move |r| async move {
            let c = TcpConn::connect(&r, addr, far()).await.unwrap();
            r.sleep_until(Instant::now() + Duration::from_millis(100))
                .await;
            let mut buf = [0u8; 64];
            assert_eq!(c.read(&mut buf, far()).await.unwrap(), 11);
            let started = Instant::now();
            assert_eq!(c.read(&mut buf, far()).await.unwrap(), 0);
            assert!(started.elapsed() < Duration::from_secs(1));
        });
        server.join().unwrap();
    }

    #[test]
    fn reads_time_out_and_sleeps_keep_time() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            std::thread::sleep(Duration::from_millis(600));
            drop(s);
        });
        on_core(move |r| async move {
            let c = TcpConn::connect(&r, addr, far()).await.unwrap();
            let started = Instant::now();
            let mut buf = [0u8; 16];
            let e = c
                .read(&mut buf, started + Duration::from_millis(150))
                .await
                .unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::TimedOut);
            let took = started.elapsed();
            assert!(
                took >= Duration::from_millis(150) && took < Duration::from_millis(450),
                "{took:?}"
            );

            let started = Instant::now();
            r.sleep_until(started + Duration::from_millis(30)).await;
            let took = started.elapsed();
            assert!(
                took >= Duration::from_millis(30) && took < Duration::from_millis(200),
                "{took:?}"
            );
        });
        server.join().unwrap();
    }

    #[test]
    fn refused_connect_and_big_writes() {
        let dead = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // A slow reader: the 8 MiB write must wait for room, not fail.
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            std::thread::sleep(Duration::from_millis(100));
            let mut total = 0;
            let mut buf = vec![0u8; 65536];
            loop {
                let n = s.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                total += n;
            }
            total
        });
        on_core(move |r| async move {
            let e = TcpConn::connect(&r, dead, far())
                .await
                .err()
                .expect("refused");
            assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
            let c = TcpConn::connect(&r, addr, far()).await.unwrap();
            c.write_all(&vec![7u8; 8 << 20], far()).await.unwrap();
        });
        assert_eq!(server.join().unwrap(), 8 << 20);
    }

    #[test]
    fn many_tasks_share_the_reactor() {
        // 50 tasks each sleeping and echoing through their own connection: all
        // finish, and the poller never blocks while one of them could run.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            for _ in 0..50 {
                let (mut s, _) = listener.accept().unwrap();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4];
                    s.read_exact(&mut buf).unwrap();
                    s.write_all(&buf).unwrap();
                });
            }
        });
        on_core(move |r| async move {
            let done = Rc::new(Cell::new(0));
            let tasks: Vec<_> = (0..50u32)
                .map(|i| {
                    let (r2, done) = (r.clone(), done.clone());
                    glommio::spawn_local(Tracked::new(&r, async move {
                        r2.sleep_until(Instant::now() + Duration::from_millis(u64::from(i % 7)))
                            .await;
                        let c = TcpConn::connect(&r2, addr, far()).await.unwrap();
                        c.write_all(&i.to_le_bytes(), far()).await.unwrap();
                        let mut buf = [0u8; 4];
                        let mut got = 0;
                        while got < 4 {
                            got += c.read(&mut buf[got..], far()).await.unwrap();
                        }
                        assert_eq!(u32::from_le_bytes(buf), i);
                        done.set(done.get() + 1);
                    }))
                })
                .collect();
            // Wait through the reactor: awaiting glommio's join handles would
            // wake this task behind the reactor's back.
            let deadline = Instant::now() + Duration::from_secs(10);
            while done.get() < 50 && Instant::now() < deadline {
                r.sleep_until(Instant::now() + Duration::from_millis(1))
                    .await;
            }
            drop(tasks);
            assert_eq!(done.get(), 50);
            assert_eq!(r.pending.get(), 0);
        });
        server.join().unwrap();
    }
}
