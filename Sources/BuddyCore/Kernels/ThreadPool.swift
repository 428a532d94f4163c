import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The body of an allocation-free parallel loop: an object whose fields hold the loop's
/// parameters, set before `ThreadPool.parallelFor(_:_:)` and read by every task.
public protocol ParallelTasks: AnyObject {
    func runTask(_ index: Int)
}

/// A persistent pool of worker threads for data-parallel loops on the decode path.
///
/// A decode step issues ~150 parallel loops of a few microseconds each, so waking threads
/// through a condition variable every time would cost more than the work. Workers instead
/// spin on a generation counter for a short while after each job and only then fall asleep.
/// The calling thread always takes part, so a pool of `threads` uses `threads - 1` workers.
public final class ThreadPool: @unchecked Sendable {
    public let threads: Int
    private let generation = Atomic<Int>(0)
    private let nextTask = Atomic<Int>(0)
    private let finished = Atomic<Int>(0)
    private let pauseSink = Atomic<Bool>(false)
    private var taskCount = 0
    /// The running loop's body. A plain (non-optional) function-typed property: an Optional
    /// would store the closure behind a reabstraction thunk, allocated on every loop.
    private var job: (Int) -> Void = ThreadPool.idle
    private static func idle(_: Int) {}
    /// The running loop's body when it is a `ParallelTasks` object (nil otherwise).
    private var taskObject: ParallelTasks?
    private var mutex = pthread_mutex_t()
    private var cond = pthread_cond_t()
    private let sleepers = Atomic<Int>(0)
    private var workers: [pthread_t] = []

    /// Spin iterations before a worker sleeps (~100 µs on this class of CPU).
    private let spinLimit = 200_000

    private init(threads: Int) {
        self.threads = max(1, threads)
        pthread_mutex_init(&mutex, nil)
        pthread_cond_init(&cond, nil)
        for index in 1..<self.threads {
            let box = Unmanaged.passRetained(WorkerBox(pool: self, index: index))
            var tid = pthread_t()
            #if canImport(Glibc)
            let rc = pthread_create(&tid, nil, { arg in
                let box = Unmanaged<WorkerBox>.fromOpaque(arg!).takeRetainedValue()
                box.pool.workerLoop()
                return nil
            }, box.toOpaque())
            #else
            let rc = pthread_create(&tid, nil, { arg in
                let box = Unmanaged<WorkerBox>.fromOpaque(arg).takeRetainedValue()
                box.pool.workerLoop()
                return nil
            }, box.toOpaque())
            #endif
            precondition(rc == 0, "pthread_create failed")
            workers.append(tid)
        }
    }

    /// Pools are shared per thread count and live for the whole process: workers keep a
    /// strong reference, so a pool is never torn down under a spinning thread.
    public static func shared(threads: Int) -> ThreadPool {
        cacheLock.withLock { cache in
            if let p = cache[threads] { return p }
            let p = ThreadPool(threads: threads)
            cache[threads] = p
            return p
        }
    }
    private static let cacheLock = Mutex<[Int: ThreadPool]>([:])

    /// Runs body(0..<count) across the pool and returns when all have finished.
    /// Convenient, but `withoutActuallyEscaping` boxes the closure: one heap allocation per
    /// loop. The decode path uses the `ParallelTasks` form below instead.
    public func parallelFor(_ count: Int, _ body: (Int) -> Void) {
        if threads == 1 || count <= 1 {
            for i in 0..<count { body(i) }
            return
        }
        withoutActuallyEscaping(body) { escaping in
            job = escaping
            runJob(count)
            job = ThreadPool.idle
        }
    }

    /// Runs tasks.runTask(0..<count) across the pool: the object carries the loop's
    /// parameters (set by its owner before the call), so nothing is allocated.
    public func parallelFor(_ count: Int, _ tasks: ParallelTasks) {
        if threads == 1 || count <= 1 {
            for i in 0..<count { tasks.runTask(i) }
            return
        }
        taskObject = tasks
        runJob(count)
        taskObject = nil
    }

    private func runJob(_ count: Int) {
        taskCount = count
        nextTask.store(0, ordering: .relaxed)
        finished.store(0, ordering: .relaxed)
        generation.add(1, ordering: .sequentiallyConsistent)
        if sleepers.load(ordering: .sequentiallyConsistent) > 0 {
            pthread_mutex_lock(&mutex)
            pthread_cond_broadcast(&cond)
            pthread_mutex_unlock(&mutex)
        }
        runTasks()
        // Wait until every worker has left this job before its body goes out of scope.
        var spins = 0
        while finished.load(ordering: .acquiring) < threads - 1 {
            spins += 1
            // A descheduled worker (other processes on the same cores) cannot finish
            // while we spin: give the core away now and then.
            if spins & 16383 == 0 { sched_yield() } else { spinPause() }
        }
    }

    private func runTasks() {
        let n = taskCount
        if let tasks = taskObject {
            while true {
                let i = nextTask.add(1, ordering: .relaxed).oldValue
                if i >= n { break }
                tasks.runTask(i)
            }
            return
        }
        let body = job
        while true {
            let i = nextTask.add(1, ordering: .relaxed).oldValue
            if i >= n { break }
            body(i)
        }
    }

    private func workerLoop() {
        var seen = 0
        while true {
            var spins = 0
            while generation.load(ordering: .sequentiallyConsistent) == seen {
                spins += 1
                if spins < spinLimit {
                    if spins & 16383 == 0 { sched_yield() } else { spinPause() }
                    continue
                }
                pthread_mutex_lock(&mutex)
                sleepers.add(1, ordering: .sequentiallyConsistent)
                while generation.load(ordering: .sequentiallyConsistent) == seen { pthread_cond_wait(&cond, &mutex) }
                sleepers.subtract(1, ordering: .sequentiallyConsistent)
                pthread_mutex_unlock(&mutex)
            }
            seen = generation.load(ordering: .acquiring)
            runTasks()
            finished.add(1, ordering: .releasing)
        }
    }

    @inline(__always) private func spinPause() {
        // No portable pause intrinsic from Swift; a relaxed atomic load keeps the loop honest.
        _ = pauseSink.load(ordering: .relaxed)
    }
}

private final class WorkerBox {
    let pool: ThreadPool
    let index: Int
    init(pool: ThreadPool, index: Int) { self.pool = pool; self.index = index }
}

extension ThreadPool {
    /// body(item, lane) for every item in 0..<count, spread over `lanes` threads of their own
    /// (lane in 0..<lanes), each taking the next item whenever it is free. For work that is
    /// cheaper as whole independent items (a conversation, a text chunk) on single-threaded
    /// state per lane than as products split across threads. With one lane the items run in
    /// order on the caller's thread. body must only write what belongs to its item and lane.
    public static func forEachItem(_ count: Int, lanes: Int, _ body: (_ item: Int, _ lane: Int) -> Void) {
        guard lanes > 1, count > 1 else { for i in 0..<count { body(i, 0) }; return }
        let next = Atomic<Int>(0)
        ThreadPool.shared(threads: lanes).parallelFor(lanes) { lane in
            while true {
                let i = next.add(1, ordering: .relaxed).oldValue
                if i >= count { break }
                body(i, lane)
            }
        }
    }

    /// `forEachItem` collecting body's results in item order. `done(n)` is told, one call at a
    /// time, how many items have finished (for a progress bar). The first error thrown (in item
    /// order) is rethrown once every item has run.
    public static func mapItems<T>(_ count: Int, lanes: Int, done: ((Int) -> Void)? = nil,
                                   _ body: (_ item: Int, _ lane: Int) throws -> T) throws -> [T] {
        var out = [Result<T, Error>?](repeating: nil, count: count)
        let finished = Mutex(0)
        out.withUnsafeMutableBufferPointer { out in
            forEachItem(count, lanes: lanes) { i, lane in
                out[i] = Result { try body(i, lane) }
                guard let done else { return }
                finished.withLock { n in
                    n += 1
                    done(n)
                }
            }
        }
        return try out.map { try $0!.get() }
    }
}
