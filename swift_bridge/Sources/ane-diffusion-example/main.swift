// ane-diffusion-example: text to image with the ANEDiffusion package.
//
// With --export FOLDER on an Apple platform it runs the Core ML models of an export folder.
// Elsewhere (or without --export) it runs scripted stub models to show the flow: the
// tokenized prompt, the sampler's timesteps, the steps, the timings, and a PNG.

import ANEDiffusion
import Foundation

let usage = """
    usage: ane-diffusion-example [--export FOLDER] [--prompt TEXT] [--output FILE.png] [--steps N]
                                 [--w W] [--seed S] [--sampler ddim|stochastic|lcm] [--images N]
                                 [--compute-units all|cpuAndNeuralEngine|cpuAndGPU|cpuOnly] [--reduce-memory]
                                 [--clamp]
    """

struct Options {
    var export: String?
    var prompt = "a red circle at the top left on a blue background"
    var output: String?
    var settings = GenerationSettings()
    var computeUnits = ComputeUnits.cpuAndNeuralEngine
    var reduceMemory = false

    init(_ arguments: [String]) throws {
        var rest = arguments[...]
        func value(_ flag: String) throws -> String {
            guard let next = rest.popFirst() else { throw ExampleError("\(flag) needs a value") }
            return next
        }
        func number<T: LosslessStringConvertible>(_ flag: String) throws -> T {
            let text = try value(flag)
            guard let parsed = T(text) else { throw ExampleError("\(flag): not a number: \(text)") }
            return parsed
        }
        while let flag = rest.popFirst() {
            switch flag {
            case "--export": export = try value(flag)
            case "--prompt": prompt = try value(flag)
            case "--output": output = try value(flag)
            case "--steps": settings.steps = try number(flag)
            case "--w": settings.w = try number(flag)
            case "--seed": settings.seed = try number(flag)
            case "--images": settings.imageCount = try number(flag)
            case "--sampler":
                let name = try value(flag)
                guard let sampler = Sampler(rawValue: name) else { throw ExampleError("unknown sampler \(name)") }
                settings.sampler = sampler
            case "--compute-units":
                let name = try value(flag)
                guard let units = ComputeUnits(rawValue: name) else { throw ExampleError("unknown compute units \(name)") }
                computeUnits = units
            case "--reduce-memory": reduceMemory = true
            case "--clamp": settings.clamp = true
            case "-h", "--help": throw ExampleError(usage)
            default: throw ExampleError("unknown argument \(flag)\n\(usage)")
            }
        }
    }
}

struct ExampleError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

func makePipeline(_ options: Options) throws -> DiffusionPipeline {
    guard let export = options.export else {
        print("no --export folder: running scripted stub models (no network)")
        return StubModels.pipeline(tokenizer: try StubModels.byteTokenizer())
    }
    #if canImport(CoreML)
    print("loading \(export) (\(options.computeUnits.rawValue))")
    return try DiffusionPipeline(exportFolder: URL(fileURLWithPath: export), computeUnits: options.computeUnits,
                                 reduceMemory: options.reduceMemory)
    #else
    // No Core ML here: check the contract, use its tokenizer, run the stub models.
    let folder = try ExportFolder(url: URL(fileURLWithPath: export))
    print("\(export): \(folder.contract.model.kind.rawValue) model, \(folder.contract.model.predictionType.rawValue); "
          + "Core ML is not available on this platform, running scripted stub models with its tokenizer")
    return StubModels.pipeline(tokenizer: try folder.tokenizer())
    #endif
}

func run() throws {
    let options = try Options(Array(CommandLine.arguments.dropFirst()))
    let pipeline = try makePipeline(options)
    let resolved = try pipeline.resolve(prompts: [options.prompt], settings: options.settings)
    let ids = try pipeline.tokenizer.encode(options.prompt, maxLength: pipeline.configuration.maxTokenLength,
                                            truncate: options.settings.truncatePrompts)
    let used = pipeline.tokenizer.countTokens(options.prompt)
    print("prompt: \(options.prompt.debugDescription)")
    print("token ids (\(used) of \(ids.count), then padding): \(ids.prefix(used).map(String.init).joined(separator: " "))")
    print("sampler \(resolved.sampler.rawValue), \(resolved.steps) steps, w=\(resolved.w) (guidance_scale \(1 + resolved.w)), "
          + "seed \(resolved.seed)")
    print("timesteps: \(resolved.timesteps)")
    let result = try pipeline.generate(prompt: options.prompt, settings: options.settings) { progress in
        print("  step \(progress.step + 1)/\(progress.stepCount) at t=\(progress.timestep)")
        return true
    }
    result.warnings.forEach { print("warning: \($0)") }
    print(result.timings.summary)
    guard let output = options.output else {
        print("\(result.images.count) image(s) of \(result.images[0].width)x\(result.images[0].height); pass --output FILE.png to save")
        return
    }
    for (index, image) in result.images.enumerated() {
        let path = result.images.count == 1 ? output : output.replacingOccurrences(of: ".png", with: "-\(index).png")
        try image.pngData().write(to: URL(fileURLWithPath: path))
        print("wrote \(path) (seed \(result.metadata[index].seed))")
    }
}

do {
    try run()
} catch {
    FileHandle.standardError.write(Data("error: \(error)\n".utf8))
    exit(1)
}
