import ANEDiffusion
import Foundation

/// Scripted stand-ins for the three networks, to show the pipeline's flow where no Core ML
/// model can run (Linux) or none is given: the "UNet" predicts a clean sample of a red disc on
/// blue whose size follows the prompt, and the "decoder" upsamples latent channels to pixels.
enum StubModels {
    static let latentSize = 8
    static let upsample = 8

    static let card = ModelCard(kind: .progressive, predictionType: .sample, steps: 4, wMin: 0, wMax: 8, defaultW: 3,
                                guidanceEmbeddingDim: 256, recommendedSampler: "ddim", recommendedSteps: 4,
                                description: "scripted stub models (no network)")

    static var configuration: PipelineConfiguration {
        PipelineConfiguration(card: card, latentShape: [4, latentSize, latentSize], imageHeight: latentSize * upsample,
                              imageWidth: latentSize * upsample)
    }

    /// A byte-level CLIP tokenizer without merges: every UTF-8 byte of a word is one token.
    static func byteTokenizer() throws -> CLIPTokenizer {
        let symbols = CLIPTokenizer.byteEncoder.map { String($0) }
        let tokens = symbols + symbols.map { $0 + CLIPTokenizer.endOfWord } + [CLIPTokenizer.startOfText, CLIPTokenizer.endOfText]
        return try CLIPTokenizer(vocabulary: Dictionary(uniqueKeysWithValues: tokens.enumerated().map { ($1, $0) }), merges: [])
    }

    struct TextEncoder: TextEncoding {
        func encode(tokens: [Int]) throws -> Tensor {
            let channels = 8
            return Tensor(shape: [1, tokens.count, channels],
                          scalars: tokens.flatMap { id in (0..<channels).map { Float(sin(Double(id * ($0 + 1)) * 0.01)) } })
        }
    }

    struct UNet: DenoisingModel {
        func predict(sample: Tensor, timestep: Int, hiddenStates: Tensor, guidanceWeights: [Float]?) throws -> Tensor {
            let n = latentSize
            let textMean = hiddenStates.scalars.reduce(0, +) / Float(hiddenStates.count)
            let radius = 2.0 + 1.5 * Double(abs(textMean)) + 0.1 * Double(guidanceWeights?.first ?? 0)
            var target = [Float](repeating: 0, count: 4 * n * n)
            for y in 0..<n {
                for x in 0..<n {
                    let d = ((Double(x) - 3.5) * (Double(x) - 3.5) + (Double(y) - 3.5) * (Double(y) - 3.5)).squareRoot()
                    let disc: Float = d < radius ? 1 : -1
                    target[0 * n * n + y * n + x] = disc  // red inside
                    target[1 * n * n + y * n + x] = -0.8
                    target[2 * n * n + y * n + x] = -disc  // blue outside
                }
            }
            // A "sample"-prediction model: the clean latents, in the VAE's scaled units.
            let scaled = target.map { $0 * 0.18215 }
            return Tensor(shape: sample.shape, scalars: (0..<sample.batchSize).flatMap { _ in scaled })
        }
    }

    struct Decoder: ImageDecoding {
        func decode(latents: Tensor) throws -> Tensor {
            let n = latentSize, size = n * upsample
            var pixels = [Float](repeating: 0, count: 3 * size * size)
            for c in 0..<3 {
                for y in 0..<size {
                    for x in 0..<size {
                        let value = latents.scalars[c * n * n + (y / upsample) * n + x / upsample]
                        pixels[c * size * size + y * size + x] = Float(tanh(Double(value) * 1.5))
                    }
                }
            }
            return Tensor(shape: [1, 3, size, size], scalars: pixels)
        }
    }

    static func pipeline(tokenizer: CLIPTokenizer) -> DiffusionPipeline {
        DiffusionPipeline(configuration: configuration, tokenizer: tokenizer, textEncoder: TextEncoder(), unet: UNet(),
                          decoder: Decoder())
    }
}
