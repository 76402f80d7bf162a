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
