// swift-tools-version:5.9
// The Swift side of ane-diffusion: the same tokenizer, noise, schedules, samplers and pipeline
// as the Python package, plus thin Core ML adapters for the exported models.

import PackageDescription

let package = Package(
    name: "ANEDiffusion",
    platforms: [.macOS(.v13), .iOS(.v16), .tvOS(.v16), .watchOS(.v9), .visionOS(.v1)],
    products: [
        .library(name: "ANEDiffusion", targets: ["ANEDiffusion"]),
        .executable(name: "ane-diffusion-example", targets: ["ane-diffusion-example"]),
    ],
    targets: [
        .target(name: "ANEDiffusion"),
        .executableTarget(name: "ane-diffusion-example", dependencies: ["ANEDiffusion"]),
        .testTarget(
            name: "ANEDiffusionTests",
            dependencies: ["ANEDiffusion"],
            resources: [.copy("Fixtures")]
        ),
    ]
)

#if os(Linux)
// Linux only (never declared on Apple platforms, never in a product): the Core ML and CoreGraphics
// adapters of Sources/ANEDiffusion/CoreML, symlinked into Tests/CoreMLAdapterTests/Adapters, are
// compiled against test-only stand-ins for the Apple API they use and unit-tested on fake models.
// This checks our code, not Apple's frameworks (README.md, "Core ML adapters on Linux").
package.targets += [
    .target(name: "CoreMLStandIn", path: "Tests/CoreMLStandIn"),
    .target(name: "CoreGraphicsStandIn", path: "Tests/CoreGraphicsStandIn"),
    .testTarget(name: "CoreMLAdapterTests", dependencies: ["ANEDiffusion", "CoreMLStandIn", "CoreGraphicsStandIn"],
                swiftSettings: [.define("APPLE_STAND_INS")]),
]
#endif
