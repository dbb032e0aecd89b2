package org.prescreen.validator;

import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.context.support.DefaultProfileValidationSupport;
import ca.uhn.fhir.context.support.IValidationSupport;
import ca.uhn.fhir.validation.FhirValidator;
import ca.uhn.fhir.validation.SingleValidationMessage;
import ca.uhn.fhir.validation.ValidationResult;
import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.stream.Stream;
import org.hl7.fhir.common.hapi.validation.support.CommonCodeSystemsTerminologyService;
import org.hl7.fhir.common.hapi.validation.support.InMemoryTerminologyServerValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.PrePopulatedValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.SnapshotGeneratingValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.UnknownCodeSystemWarningValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.ValidationSupportChain;
import org.hl7.fhir.common.hapi.validation.validator.FhirInstanceValidator;
import org.hl7.fhir.instance.model.api.IBaseResource;
import org.hl7.fhir.r4.model.CodeSystem;
import org.hl7.fhir.r4.model.CodeSystem.CodeSystemContentMode;

/**
 * Validates FHIR R4 JSON files against the core R4 definitions, offline, in one JVM.
 *
 * <p>Arguments: folders of CodeSystem and ValueSet JSON files that count as known terminology
 * (prescreen's own, so that every code it writes in its systems is checked against them). Then
 * the process reads file paths from stdin, one per line, and answers each with one JSON line on
 * stdout: {@code {"path": ..., "results": [{"index": n, "resourceType": ..., "issues": [...]}]}}.
 * A {@code .ndjson} file holds one resource per line (index = line number), any other file one
 * resource (index 0). The first line printed is {@code {"ready": true, ...}}.
 *
 * <p>Code systems that are neither in the core definitions nor in those folders (SNOMED CT,
 * LOINC: no terminology server offline) yield a warning, not an error: a code is not wrong merely
 * because it cannot be looked up here. Everything else the validator finds (structure,
 * cardinality, invariants, references, codes in known systems) keeps its own severity.
 */
public final class ValidatorMain {

  private ValidatorMain() {}

  public static void main(String[] args) throws IOException {
    FhirContext context = FhirContext.forR4();
    PrePopulatedValidationSupport local = new PrePopulatedValidationSupport(context);
    int known = 0;
    for (String folder : args) {
      known += loadTerminology(context, local, Path.of(folder));
    }
    UnknownCodeSystemWarningValidationSupport unknownSystems =
        new UnknownCodeSystemWarningValidationSupport(context);
    unknownSystems.setNonExistentCodeSystemSeverity(IValidationSupport.IssueSeverity.WARNING);
    ValidationSupportChain chain =
        new ValidationSupportChain(
            new DefaultProfileValidationSupport(context),
            new CommonCodeSystemsTerminologyService(context),
            local,
            new InMemoryTerminologyServerValidationSupport(context),
            new SnapshotGeneratingValidationSupport(context),
            unknownSystems);
    FhirInstanceValidator module = new FhirInstanceValidator(chain);
    // prescreen's own extensions have urn: URLs and no published StructureDefinition.
    module.setAnyExtensionsAllowed(true);
    module.setErrorForUnknownProfiles(true);
    FhirValidator validator = context.newValidator().registerValidatorModule(module);

    PrintStream out = new PrintStream(System.out, true, StandardCharsets.UTF_8);
    // The first validation loads and indexes the core definitions: pay for it before "ready".
    validator.validateWithResult("{\"resourceType\":\"Basic\",\"code\":{\"text\":\"warm-up\"}}");
    out.println("{\"ready\": true, \"terminology\": " + known + "}");

    BufferedReader in =
        new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
    String line;
    while ((line = in.readLine()) != null) {
      String path = line.strip();
      if (!path.isEmpty()) {
        out.println(validateFile(validator, Path.of(path)));
      }
    }
  }

  private static int loadTerminology(
      FhirContext context, PrePopulatedValidationSupport local, Path folder) throws IOException {
    int count = 0;
    List<Path> files;
    try (Stream<Path> listing = Files.list(folder)) {
      files = listing.filter(p -> p.toString().endsWith(".json")).sorted().toList();
    }
    for (Path file : files) {
      IBaseResource resource =
          context.newJsonParser().parseResource(Files.readString(file, StandardCharsets.UTF_8));
      String type = context.getResourceType(resource);
      if (type.equals("CodeSystem")) {
        // A CodeSystem that lists no codes (content not-present: prescreen's open-ended tag
        // keys) cannot check one; known, it would fail every lookup. Left out, its codings are
        // from a system unknown here, like SNOMED CT's.
        if (((CodeSystem) resource).getContent() == CodeSystemContentMode.NOTPRESENT) {
          continue;
        }
        local.addCodeSystem(resource);
        count++;
      } else if (type.equals("ValueSet")) {
        local.addValueSet(resource);
        count++;
      }
    }
    return count;
  }

  private static String validateFile(FhirValidator validator, Path path) {
    StringBuilder json = new StringBuilder("{\"path\": ").append(quote(path.toString()));
    List<String> results = new ArrayList<>();
    try {
      if (path.toString().endsWith(".ndjson")) {
        List<String> lines = Files.readAllLines(path, StandardCharsets.UTF_8);
        for (int i = 0; i < lines.size(); i++) {
          if (!lines.get(i).isBlank()) {
            results.add(validateOne(validator, lines.get(i), i + 1));
          }
        }
      } else {
        results.add(validateOne(validator, Files.readString(path, StandardCharsets.UTF_8), 0));
      }
    } catch (IOException | RuntimeException exc) {
      // A file that cannot be read or parsed at all is one fatal issue, never a silent pass.
      results.add(
          "{\"index\": -1, \"resourceType\": null, \"issues\": [{\"severity\": \"fatal\", "
              + "\"location\": \"\", \"message\": "
              + quote(exc.getClass().getSimpleName() + ": " + exc.getMessage())
              + "}]}");
    }
    json.append(", \"results\": [").append(String.join(", ", results)).append("]}");
    return json.toString();
  }

  private static String validateOne(FhirValidator validator, String text, int index) {
    ValidationResult result = validator.validateWithResult(text);
    List<String> issues = new ArrayList<>();
    for (SingleValidationMessage message : result.getMessages()) {
      issues.add(
          "{\"severity\": "
              + quote(message.getSeverity().getCode())
              + ", \"location\": "
              + quote(message.getLocationString())
              + ", \"message\": "
              + quote(message.getMessage())
              + "}");
    }
    return "{\"index\": "
        + index
        + ", \"resourceType\": "
        + quote(resourceType(text))
        + ", \"issues\": ["
        + String.join(", ", issues)
        + "]}";
  }

  /** The resourceType named in the text, for the report only (the validator reads the rest). */
  private static String resourceType(String text) {
    int key = text.indexOf("\"resourceType\"");
    if (key < 0) {
      return null;
    }
    int open = text.indexOf('"', text.indexOf(':', key) + 1);
    int close = text.indexOf('"', open + 1);
    return open < 0 || close < 0 ? null : text.substring(open + 1, close);
  }

  private static String quote(String value) {
    if (value == null) {
      return "null";
    }
    StringBuilder quoted = new StringBuilder("\"");
    for (char c : value.toCharArray()) {
      switch (c) {
        case '"' -> quoted.append("\\\"");
        case '\\' -> quoted.append("\\\\");
        case '\n' -> quoted.append("\\n");
        case '\r' -> quoted.append("\\r");
        case '\t' -> quoted.append("\\t");
        default -> {
          if (c < 0x20) {
            quoted.append(String.format("\\u%04x", (int) c));
          } else {
            quoted.append(c);
          }
        }
      }
    }
    return quoted.append('"').toString();
  }
}
