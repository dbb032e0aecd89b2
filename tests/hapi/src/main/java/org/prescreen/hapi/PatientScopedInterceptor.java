package org.prescreen.hapi;

import ca.uhn.fhir.interceptor.api.Hook;
import ca.uhn.fhir.interceptor.api.Interceptor;
import ca.uhn.fhir.interceptor.api.Pointcut;
import ca.uhn.fhir.jpa.searchparam.SearchParameterMap;
import ca.uhn.fhir.model.api.IQueryParameterType;
import ca.uhn.fhir.rest.api.server.RequestDetails;
import ca.uhn.fhir.rest.server.exceptions.ForbiddenOperationException;
import ca.uhn.fhir.rest.server.exceptions.InvalidRequestException;
import ca.uhn.fhir.rest.server.servlet.ServletRequestDetails;
import ca.uhn.fhir.rest.server.util.ICachedSearchDetails;
import java.util.List;
import java.util.Set;

/**
 * The constraints of the large EHR vendors' FHIR APIs, for tests: a search of a clinical type must
 * name exactly one patient ({@code patient} or {@code subject}), an Appointment search must name a
 * patient or a date, and Bulk Data export is offered at Group level only.
 *
 * <p>Searches are checked where the JPA layer registers them, so a search inside a batch Bundle is
 * refused exactly as a plain GET is (HAPI runs a batch's GET entries without the incoming-request
 * hooks). Only searches a client asked for over HTTP are checked: the server's own jobs (a Group
 * export reading its members' records) run unconstrained.
 */
@Interceptor
public class PatientScopedInterceptor {

  /** Types whose records belong to one patient: searched only for one patient at a time. */
  static final Set<String> CLINICAL_TYPES =
      Set.of(
          "AllergyIntolerance",
          "CarePlan",
          "CareTeam",
          "Condition",
          "DiagnosticReport",
          "DocumentReference",
          "Encounter",
          "FamilyMemberHistory",
          "Goal",
          "Immunization",
          "MedicationAdministration",
          "MedicationDispense",
          "MedicationRequest",
          "MedicationStatement",
          "Observation",
          "Procedure",
          "ServiceRequest",
          "Specimen");

  static final List<String> PATIENT_PARAMETERS = List.of("patient", "subject");
  static final List<String> APPOINTMENT_PARAMETERS = List.of("patient", "actor", "date");

  @Hook(Pointcut.STORAGE_PRESEARCH_REGISTERED)
  public void checkSearch(
      ICachedSearchDetails search, RequestDetails request, SearchParameterMap params) {
    if (!(request instanceof ServletRequestDetails)) {
      return; // the server's own work (a Group export's reading, a subscription's matching)
    }
    if (request.getOperation() != null) {
      return; // an operation such as Group/ID/$export searching on the client's behalf
    }
    String type = search.getResourceType();
    if (CLINICAL_TYPES.contains(type)) {
      requireOnePatient(type, params);
    } else if ("Appointment".equals(type)
        && APPOINTMENT_PARAMETERS.stream().noneMatch(params::containsKey)) {
      throw new ForbiddenOperationException(
          "An Appointment search requires a patient, actor or date parameter");
    }
  }

  private static void requireOnePatient(String type, SearchParameterMap params) {
    String given = PATIENT_PARAMETERS.stream().filter(params::containsKey).findFirst().orElse(null);
    if (given == null) {
      throw new ForbiddenOperationException(
          "A " + type + " search requires the patient parameter (patient or subject)");
    }
    List<List<IQueryParameterType>> values = params.get(given);
    if (values.size() != 1 || values.get(0).size() != 1) {
      throw new InvalidRequestException(
          "A " + type + " search requires the patient parameter with exactly one patient");
    }
  }

  /** Bulk Data export of every patient (Patient/$export) or of the whole server ($export). */
  @Hook(Pointcut.SERVER_INCOMING_REQUEST_POST_PROCESSED)
  public boolean checkExport(RequestDetails request) {
    String operation = request.getOperation();
    if (operation != null && operation.replace("$", "").equals("export")) {
      String type = request.getResourceName();
      if (type == null || type.isEmpty() || "Patient".equals(type)) {
        throw new ForbiddenOperationException(
            "Bulk Data export is offered at Group level only (Group/[id]/$export)");
      }
    }
    return true;
  }
}
