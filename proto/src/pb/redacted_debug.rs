//! `Debug` for the messages that carry personal data in plaintext: shows structure and
//! non-personal fields only, so that logging one by mistake leaks nothing.

use std::fmt;

use super::{FollowUpContact, IncidentSubject, InteractionRecord, SubjectRecord, SurveyAnswer};

impl fmt::Debug for SubjectRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubjectRecord").finish_non_exhaustive()
    }
}

impl fmt::Debug for InteractionRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InteractionRecord")
            .field("channel", &self.channel)
            .field("handle_time_seconds", &self.handle_time_seconds)
            .field("survey", &self.survey)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for SurveyAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SurveyAnswer")
            .field("nps", &self.nps)
            .field("csat", &self.csat)
            .field("ces", &self.ces)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for IncidentSubject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IncidentSubject")
            .field("country", &self.country)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for FollowUpContact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FollowUpContact")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}
