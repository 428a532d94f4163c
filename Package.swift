// swift-tools-version:6.0
import PackageDescription

// Numeric code is unusably slow without optimisation, so the compute targets
// are always built with -O (also in debug builds, where tests may run).
let computeFlags: [SwiftSetting] = [
    .unsafeFlags(["-O", "-wmo"]),
]

let package = Package(
    name: "Buddy",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "buddy", targets: ["buddy"]),
        .library(name: "BuddyCore", targets: ["BuddyCore"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        // System libraries: the only places C headers enter the package.
        .systemLibrary(name: "CBLAS", path: "Sources/CBLAS", pkgConfig: "openblas",
                       providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CNcursesw", path: "Sources/CNcursesw", pkgConfig: "ncursesw",
                       providers: [.apt(["libncursesw5-dev"])]),

        // Vector inner loops (AVX2 chosen at run time on x86-64, portable C elsewhere).
        .target(name: "CKernels", cSettings: [.unsafeFlags(["-O3", "-ffp-contract=off"])]),
        // Compute library: GGUF, quantised kernels, model, tokenizer, sampling.
        // Knows nothing of Dispatch queues owned by the app or of curses.
        .target(name: "BuddyCore", dependencies: ["CBLAS", "CKernels"], swiftSettings: computeFlags),
        // Routing library: Decision Module, budgets, static baselines, training.
        .target(name: "BuddyRouting", dependencies: ["BuddyCore", "CKernels", "CBLAS"], swiftSettings: computeFlags),
        // Engine: owns the model on one serial queue, emits Sendable events.
        .target(name: "BuddyEngine", dependencies: ["BuddyCore", "BuddyRouting"]),
        // Terminal UI: the only target that imports ncurses.
        .target(name: "BuddyTUI", dependencies: ["BuddyEngine", "BuddyCore", "CNcursesw"]),
        // Training and calibration drivers: data assembly, checkpoints, router, set, gate, switch,
        // swap and predictor fits, rankings and stand-ins.
        .target(name: "BuddyTraining", dependencies: ["BuddyCore", "BuddyRouting"]),
        // Evaluation drivers: perplexity, HellaSwag, chat and auto-budget runs, result tables,
        // speed measurement and the soak test.
        .target(name: "BuddyEvaluation", dependencies: ["BuddyCore", "BuddyRouting", "BuddyEngine"]),
        // The thin command-line executable: argument parsing and printing.
        .executableTarget(name: "buddy", dependencies: [
            "BuddyCore", "BuddyRouting", "BuddyEngine", "BuddyTUI", "BuddyTraining", "BuddyEvaluation",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),

        // Counts heap allocations by interposing malloc (test-only: proves a decode step allocates nothing).
        .target(name: "CAllocationCounter"),
        // Seeded mutation fuzzing shared by the test targets (not shipped).
        .target(name: "BuddyFuzzSupport", dependencies: ["BuddyCore"]),
        // Paths, the default-model rule and its one cached loader, fixtures and seeded helpers,
        // shared by every test target (not shipped).
        .target(name: "BuddyTestSupport", dependencies: ["BuddyCore"], path: "Tests/BuddyTestSupport"),

        .testTarget(name: "BuddyCoreTests", dependencies: ["BuddyCore", "CKernels", "BuddyFuzzSupport", "BuddyTestSupport"], swiftSettings: computeFlags),
        .testTarget(name: "BuddyEngineTests", dependencies: ["BuddyEngine", "BuddyCore", "BuddyRouting", "BuddyTestSupport"]),
        .testTarget(name: "BuddyTUITests", dependencies: ["BuddyTUI", "BuddyEngine", "BuddyCore", "BuddyFuzzSupport", "BuddyTestSupport"]),
        .testTarget(name: "BuddyRoutingTests", dependencies: ["BuddyRouting", "BuddyCore", "BuddyFuzzSupport", "BuddyTraining", "BuddyEvaluation", "CAllocationCounter", "BuddyTestSupport"], swiftSettings: computeFlags),
    ]
)
