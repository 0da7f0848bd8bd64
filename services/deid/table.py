"""PS3.15 Annex E de-identification tables, generated: do not edit.

DICOM PS3.15 Annex E. Table E.1-1: PS3.15 2025b as parsed by innolitics/dicom-standard (copy in
DIAGNijmegen/rse-grand-challenge-dicom-de-id-procedure@3b76081c), plus the 2026c basic-profile
delta (dicom-anonymizer 2.1.0). Table E.3.10-1: chsasank/dicom_standard@2c591286 (2020-era
edition). See scripts/deid_table/README.md.

Table E.1-1 (Application Level Confidentiality Profile Attributes) gives, per attribute, the
Basic Profile action and the action of each option (E.3); Table E.3.10-1 lists the private
attributes the Retain Safe Private Option may keep. Regenerate with ``python
scripts/gen_deid_table.py`` from ``scripts/deid_table/``.

Over 2025b: 9 rows added from 2026c, basic action only: (0018,1010), (0018,1011), (003A,0020),
(003A,0203), (003A,020C), (0040,0556), (0040,B020), (0040,E012), (0070,0006).
"""

EDITION: str = "2025b"
SOURCE: str = (
    "DICOM PS3.15 Annex E. Table E.1-1: PS3.15 2025b as parsed by "
    "innolitics/dicom-standard (copy in "
    "DIAGNijmegen/rse-grand-challenge-dicom-de-id-procedure@3b76081c), plus the 2026c"
    " basic-profile delta (dicom-anonymizer 2.1.0). Table E.3.10-1: "
    "chsasank/dicom_standard@2c591286 (2020-era edition). See "
    "scripts/deid_table/README.md."
)

#: Table E.1-1 option columns, in the order of the option tuples below.
OPTIONS: tuple[str, ...] = (
    "rtn_safe_priv",
    "rtn_uids",
    "rtn_dev_id",
    "rtn_inst_id",
    "rtn_pat_chars",
    "rtn_long_full_dates",
    "rtn_long_modif_dates",
    "clean_desc",
    "clean_struct_cont",
    "clean_graph",
)

#: Table E.1-1, one row per exact tag: ``GGGGEEEE ACTION OPTIONS NAME``, OPTIONS one
#: character per column of OPTIONS (``.`` = no entry). Kept as text and parsed at import:
#: compiling a 650-entry dict literal on every start costs 30 times more.
_ROWS = """\
00001000 X .K........ Affected SOP Instance UID
00001001 U .K........ Requested SOP Instance UID
00020003 U .K........ Media Storage SOP Instance UID
00041511 U .K........ Referenced SOP Instance UID in File
00080012 X/D .....KC... Instance Creation Date
00080013 X/Z/D .....KC... Instance Creation Time
00080014 U .K........ Instance Creator UID
00080015 X .....KC... Instance Coercion DateTime
00080017 U .K........ Acquisition UID
00080018 U .K........ SOP Instance UID
00080019 U .K........ Pyramid UID
00080020 Z .....KC... Study Date
00080021 X/D .....KC... Series Date
00080022 X/Z .....KC... Acquisition Date
00080023 Z/D .....KC... Content Date
00080024 X .....KC... Overlay Date
00080025 X .....KC... Curve Date
0008002A X/Z/D .....KC... Acquisition DateTime
00080030 Z .....KC... Study Time
00080031 X/D .....KC... Series Time
00080032 X/Z .....KC... Acquisition Time
00080033 Z/D .....KC... Content Time
00080034 X .....KC... Overlay Time
00080035 X .....KC... Curve Time
00080050 Z .......... Accession Number
00080054 X ..C....... Retrieve AE Title
00080055 X ..C....... Station AE Title
00080058 U .K........ Failed SOP Instance UID List
00080080 X/Z/D ...K...... Institution Name
00080081 X ...K...... Institution Address
00080082 X/Z/D ...K...... Institution Code Sequence
00080090 Z .......... Referring Physician's Name
00080092 X .......... Referring Physician's Address
00080094 X .......... Referring Physician's Telephone Numbers
00080096 X .......... Referring Physician Identification Sequence
0008009C Z .......... Consulting Physician's Name
0008009D X .......... Consulting Physician Identification Sequence
00080106 D .....KC... Context Group Version
00080107 D .....KC... Context Group Local Version
00080201 X .....KC... Timezone Offset From UTC
00081000 X ..C....... Network ID
00081010 X/Z/D ..K....... Station Name
00081030 X .......C.. Study Description
0008103E X .......C.. Series Description
00081040 X ...K...... Institutional Department Name
00081041 X ...K...... Institutional Department Type Code Sequence
00081048 X .......... Physician(s) of Record
00081049 X .......... Physician(s) of Record Identification Sequence
00081050 X .......... Performing Physician's Name
00081052 X .......... Performing Physician Identification Sequence
00081060 X .......... Name of Physician(s) Reading Study
00081062 X .......... Physician(s) Reading Study Identification Sequence
00081070 X/Z/D .......... Operators' Name
00081072 X/D .......... Operator Identification Sequence
00081080 X .......C.. Admitting Diagnoses Description
00081084 X .......C.. Admitting Diagnoses Code Sequence
00081088 X .......C.. Pyramid Description
00081110 X/Z .K........ Referenced Study Sequence
00081111 X/Z/D .K........ Referenced Performed Procedure Step Sequence
00081120 X .K........ Referenced Patient Sequence
00081140 X/Z/U* .K........ Referenced Image Sequence
00081155 U .K........ Referenced SOP Instance UID
00081195 U .K........ Transaction UID
00081301 X .......C.. Principal Diagnosis Code Sequence
00081302 X .......C.. Primary Diagnosis Code Sequence
00081303 X .......C.. Secondary Diagnoses Code Sequence
00081304 X .......C.. Histological Diagnoses Code Sequence
00082111 X .......C.. Derivation Description
00082112 X/Z/U* .K........ Source Image Sequence
00083010 U .K........ Irradiation Event UID
00084000 X .......C.. Identifying Comments
00100010 Z .......... Patient's Name
00100011 X .......... Person Names to Use Sequence
00100012 X .......... Name to Use
00100013 X .......... Name to Use Comment
00100014 X .......... Third Person Pronouns Sequence
00100015 X .......... Pronoun Code Sequence
00100016 X .......C.. Pronoun Comment
00100020 Z/D .......... Patient ID
00100021 X .......... Issuer of Patient ID
00100030 Z .......... Patient's Birth Date
00100032 X .......... Patient's Birth Time
00100040 Z ....K..... Patient's Sex
00100041 X .......... Gender Identity Sequence
00100042 X ....C..C.. Sex Parameters for Clinical Use Category Comment
00100043 X ....K..... Sex Parameters for Clinical Use Category Sequence
00100044 X .......... Gender Identity Code Sequence
00100045 X .......C.. Gender Identity Comment
00100046 X ....K..... Sex Parameters for Clinical Use Category Code Sequence
00100047 X ....K..... Sex Parameters for Clinical Use Category Reference
00100050 X .......... Patient's Insurance Plan Code Sequence
00100101 X .......... Patient's Primary Language Code Sequence
00100102 X .......... Patient's Primary Language Modifier Code Sequence
00101000 X .......... Other Patient IDs
00101001 X .......... Other Patient Names
00101002 X .......... Other Patient IDs Sequence
00101005 X .......... Patient's Birth Name
00101010 X ....K..... Patient's Age
00101020 X ....K..... Patient's Size
00101030 X ....K..... Patient's Weight
00101040 X .......... Patient's Address
00101050 X .......... Insurance Plan Identification
00101060 X .......... Patient's Mother's Birth Name
00101080 X .......... Military Rank
00101081 X .......... Branch of Service
00101090 X .......... Medical Record Locator
00101100 X .......... Referenced Patient Photo Sequence
00102000 X .......C.. Medical Alerts
00102110 X ....C..C.. Allergies
00102150 X .......... Country of Residence
00102152 X .......... Region of Residence
00102154 X .......... Patient's Telephone Numbers
00102155 X .......... Patient's Telecom Information
00102160 X ....K..... Ethnic Group
00102161 X ....K..... Ethnic Group Code Sequence
00102162 X ....K..... Ethnic Groups
00102180 X .......C.. Occupation
001021A0 X ....K..... Smoking Status
001021B0 X .......C.. Additional Patient History
001021C0 X ....K..... Pregnancy Status
001021D0 X .....KC... Last Menstrual Date
001021F0 X .......... Patient's Religious Preference
00102203 X/Z ....K..... Patient's Sex Neutered
00102297 X .......... Responsible Person
00102299 X .......... Responsible Organization
00104000 X .......C.. Patient Comments
00120010 D .......... Clinical Trial Sponsor Name
00120020 D .......... Clinical Trial Protocol ID
00120021 Z .......... Clinical Trial Protocol Name
00120022 X .......... Issuer of Clinical Trial Protocol ID
00120023 X .......... Other Clinical Trial Protocol IDs Sequence
00120030 Z ...K...... Clinical Trial Site ID
00120031 Z ...K...... Clinical Trial Site Name
00120032 X .......... Issuer of Clinical Trial Site ID
00120040 D .......... Clinical Trial Subject ID
00120041 X .......... Issuer of Clinical Trial Subject ID
00120042 D .......... Clinical Trial Subject Reading ID
00120043 X .......... Issuer of Clinical Trial Subject Reading ID
00120050 Z .......... Clinical Trial Time Point ID
00120051 X .......C.. Clinical Trial Time Point Description
00120055 X .......... Issuer of Clinical Trial Time Point ID
00120060 Z ...K...... Clinical Trial Coordinating Center Name
00120071 X .......... Clinical Trial Series ID
00120072 X .......C.. Clinical Trial Series Description
00120073 X .......... Issuer of Clinical Trial Series ID
00120081 D ...K...... Clinical Trial Protocol Ethics Committee Name
00120082 X .......... Clinical Trial Protocol Ethics Committee Approval Number
00120086 X .....KC... Ethics Committee Approval Effectiveness Start Date
00120087 X .....KC... Ethics Committee Approval Effectiveness End Date
0014407C X ..K..KC... Calibration Time
0014407E X ..K..KC... Calibration Date
0016002B X .......C.. Maker Note
0016004B X .......C.. Device Setting Description
0016004D X .......... Camera Owner Name
0016004E X ..K....... Lens Specification
0016004F X ..K....... Lens Make
00160050 X ..K....... Lens Model
00160051 X ..K....... Lens Serial Number
00160070 X .......... GPS Version ID
00160071 X .......... GPS Latitude Ref
00160072 X .......... GPS Latitude
00160073 X .......... GPS Longitude Ref
00160074 X .......... GPS Longitude
00160075 X .......... GPS Altitude Ref
00160076 X .......... GPS Altitude
00160077 X .......... GPS Time Stamp
00160078 X .......... GPS Satellites
00160079 X .......... GPS Status
0016007A X .......... GPS Measure Mode
0016007B X .......... GPS DOP
0016007C X .......... GPS Speed Ref
0016007D X .......... GPS Speed
0016007E X .......... GPS Track Ref
0016007F X .......... GPS Track
00160080 X .......... GPS Img Direction Ref
00160081 X .......... GPS Img Direction
00160082 X .......... GPS Map Datum
00160083 X .......... GPS Dest Latitude Ref
00160084 X .......... GPS Dest Latitude
00160085 X .......... GPS Dest Longitude Ref
00160086 X .......... GPS Dest Longitude
00160087 X .......... GPS Dest Bearing Ref
00160088 X .......... GPS Dest Bearing
00160089 X .......... GPS Dest Distance Ref
0016008A X .......... GPS Dest Distance
0016008B X .......... GPS Processing Method
0016008C X .......... GPS Area Information
0016008D X .....KC... GPS Date Stamp
0016008E X .......... GPS Differential
00180010 Z/D .......C.. Contrast/Bolus Agent
00180027 X .....KC... Intervention Drug Stop Time
00180035 X .....KC... Intervention Drug Start Time
00181000 X/Z/D ..K....... Device Serial Number
00181002 U .KK....... Device UID
00181004 X ..K....... Plate ID
00181005 X ..K....... Generator ID
00181007 X ..K....... Cassette ID
00181008 X ..K....... Gantry ID
00181009 X ..K....... Unique Device Identifier
0018100A X ..K....... UDI Sequence
0018100B U .KK....... Manufacturer's Device Class UID
00181010 X .......... Secondary Capture Device ID
00181011 X .......... Hardcopy Creation Device ID
00181012 X .....KC... Date of Secondary Capture
00181014 X .....KC... Time of Secondary Capture
00181030 X/D .......C.. Protocol Name
00181042 X .....KC... Contrast/Bolus Start Time
00181043 X .....KC... Contrast/Bolus Stop Time
00181072 X .....KC... Radiopharmaceutical Start Time
00181073 X .....KC... Radiopharmaceutical Stop Time
00181078 X .....KC... Radiopharmaceutical Start DateTime
00181079 X .....KC... Radiopharmaceutical Stop DateTime
001811BB D .......C.. Acquisition Field Of View Label
00181200 X ..K..KC... Date of Last Calibration
00181201 X ..K..KC... Time of Last Calibration
00181202 X ..K..KC... DateTime of Last Calibration
00181203 Z ..K..KC... Calibration DateTime
00181204 X ..K..KC... Date of Manufacture
00181205 X ..K..KC... Date of Installation
00181400 X/D .......C.. Acquisition Device Processing Description
00182042 U .K........ Target UID
00184000 X .......C.. Acquisition Comments
00185011 X ..K....... Transducer Identification Sequence
0018700A X/D ..K....... Detector ID
0018700C X/D ..K..KC... Date of Last Detector Calibration
0018700E X/D ..K..KC... Time of Last Detector Calibration
00189074 D .....KC... Frame Acquisition DateTime
00189151 D .....KC... Frame Reference DateTime
00189185 X .......C.. Respiratory Motion Compensation Technique Description
00189367 D ..K....... X-Ray Source ID
00189369 D .....KC... Source Start DateTime
0018936A D .....KC... Source End DateTime
00189371 D ..K....... X-Ray Detector ID
00189373 X ..K....... X-Ray Detector Label
0018937B X .......C.. Multi-energy Acquisition Description
0018937F X .......C.. Decomposition Description
00189424 X .......C.. Acquisition Protocol Description
00189516 X/D .....KC... Start Acquisition DateTime
00189517 X/D .....KC... End Acquisition DateTime
00189623 D .....KC... Functional Sync Pulse
00189701 D .....KC... Decay Correction DateTime
00189804 D .....KC... Exclusion Start DateTime
00189919 Z/D .....KC... Instruction Performed DateTime
00189937 X .......C.. Requested Series Description
0018A002 X .....KC... Contribution DateTime
0018A003 X .......C.. Contribution Description
0020000D U .K........ Study Instance UID
0020000E U .K........ Series Instance UID
00200010 Z .......... Study ID
00200027 X .......C.. Pyramid Label
00200052 U .K........ Frame of Reference UID
00200200 U .K........ Synchronization Frame of Reference UID
00203401 X ..K....... Modifying Device ID
00203403 X .....KC... Modified Image Date
00203405 X .....KC... Modified Image Time
00203406 X .......... Modified Image Description
00204000 X .......C.. Image Comments
00209158 X .......C.. Frame Comments
00209161 U .K........ Concatenation UID
00209164 U .K........ Dimension Organization UID
00281199 U .K........ Palette Color Lookup Table UID
00281214 U .K........ Large Palette Color Lookup Table UID
00284000 X .......... Image Presentation Comments
00320012 X .......... Study ID Issuer
00320032 X .....KC... Study Verified Date
00320033 X .....KC... Study Verified Time
00320034 X .....KC... Study Read Date
00320035 X .....KC... Study Read Time
00321000 X .....KC... Scheduled Study Start Date
00321001 X .....KC... Scheduled Study Start Time
00321010 X .....KC... Scheduled Study Stop Date
00321011 X .....KC... Scheduled Study Stop Time
00321020 X ..K....... Scheduled Study Location
00321021 X ..C....... Scheduled Study Location AE Title
00321030 X .......C.. Reason for Study
00321032 X .......... Requesting Physician
00321033 X .......... Requesting Service
00321040 X .....KC... Study Arrival Date
00321041 X .....KC... Study Arrival Time
00321050 X .....KC... Study Completion Date
00321051 X .....KC... Study Completion Time
00321060 X/Z .......C.. Requested Procedure Description
00321066 X .......C.. Reason for Visit
00321067 X .......C.. Reason for Visit Code Sequence
00321070 X .......C.. Requested Contrast Agent
00324000 X .......C.. Study Comments
00340001 D .......... Flow Identifier Sequence
00340002 D .......... Flow Identifier
00340005 D .......... Source Identifier
00340007 D .....KC... Frame Origin Timestamp
00380004 X .......... Referenced Patient Alias Sequence
00380010 X .......... Admission ID
00380011 X .......... Issuer of Admission ID
00380014 X .......... Issuer of Admission ID Sequence
0038001A X .....KC... Scheduled Admission Date
0038001B X .....KC... Scheduled Admission Time
0038001C X .....KC... Scheduled Discharge Date
0038001D X .....KC... Scheduled Discharge Time
0038001E X .......... Scheduled Patient Institution Residence
00380020 X .....KC... Admitting Date
00380021 X .....KC... Admitting Time
00380030 X .....KC... Discharge Date
00380032 X .....KC... Discharge Time
00380040 X .......C.. Discharge Diagnosis Description
00380050 X ....C..... Special Needs
00380060 X .......... Service Episode ID
00380061 X .......... Issuer of Service Episode ID
00380062 X .......C.. Service Episode Description
00380064 X .......... Issuer of Service Episode ID Sequence
00380300 X .......... Current Patient Location
00380400 X .......... Patient's Institution Residence
00380500 X ....C..C.. Patient State
00384000 X .......C.. Visit Comments
003A0020 X .......... Multiplex Group Label
003A0203 X .......... Channel Label
003A020C X .......... Channel Derivation Description
003A0310 U .K........ Multiplex Group UID
003A0314 D .....KC... Impedance Measurement DateTime
003A0329 X .......C.. Waveform Filter Description
003A032B X .......C.. Filter Lookup Table Description
00400001 X ..C....... Scheduled Station AE Title
00400002 X .....KC... Scheduled Procedure Step Start Date
00400003 X .....KC... Scheduled Procedure Step Start Time
00400004 X .....KC... Scheduled Procedure Step End Date
00400005 X .....KC... Scheduled Procedure Step End Time
00400006 X .......... Scheduled Performing Physician's Name
00400007 X .......C.. Scheduled Procedure Step Description
00400009 X .......... Scheduled Procedure Step ID
0040000B X .......... Scheduled Performing Physician Identification Sequence
00400010 X ..K....... Scheduled Station Name
00400011 X ..K....... Scheduled Procedure Step Location
00400012 X ....C..... Pre-Medication
00400241 X ..C....... Performed Station AE Title
00400242 X ..K....... Performed Station Name
00400243 X .......... Performed Location
00400244 X .....KC... Performed Procedure Step Start Date
00400245 X .....KC... Performed Procedure Step Start Time
00400250 X .....KC... Performed Procedure Step End Date
00400251 X .....KC... Performed Procedure Step End Time
00400253 X .......... Performed Procedure Step ID
00400254 X .......C.. Performed Procedure Step Description
00400275 X .......C.. Request Attributes Sequence
00400280 X .......C.. Comments on the Performed Procedure Step
00400310 X .......C.. Comments on Radiation Dose
0040050A X .......... Specimen Accession Number
00400512 D .......... Container Identifier
00400513 Z .......... Issuer of the Container Identifier Sequence
0040051A X .......C.. Container Description
00400551 D .......... Specimen Identifier
00400554 U .K........ Specimen UID
00400555 X/Z ........C. Acquisition Context Sequence
00400556 X .......... Acquisition Context Description
00400562 Z .......... Issuer of the Specimen Identifier Sequence
00400600 X .......C.. Specimen Short Description
00400602 X .......C.. Specimen Detailed Description
00400610 Z ........C. Specimen Preparation Sequence
004006FA X .......... Slide Identifier
00401001 X .......... Requested Procedure ID
00401002 X .......C.. Reason for the Requested Procedure
00401004 X .......... Patient Transport Arrangements
00401005 X .......... Requested Procedure Location
0040100A X .......C.. Reason for Requested Procedure Code Sequence
00401010 X .......... Names of Intended Recipients of Results
00401011 X .......... Intended Recipients of Results Identification Sequence
00401101 D .......... Person Identification Code Sequence
00401102 X .......... Person's Address
00401103 X .......... Person's Telephone Numbers
00401104 X .......... Person's Telecom Information
00401400 X .......C.. Requested Procedure Comments
00402001 X .......C.. Reason for the Imaging Service Request
00402004 X .....KC... Issue Date of Imaging Service Request
00402005 X .....KC... Issue Time of Imaging Service Request
00402008 X .......... Order Entered By
00402009 X .......... Order Enterer's Location
00402010 X .......... Order Callback Phone Number
00402011 X .......... Order Callback Telecom Information
00402016 Z .......... Placer Order Number / Imaging Service Request
00402017 Z .......... Filler Order Number / Imaging Service Request
00402400 X .......C.. Imaging Service Request Comments
00403001 X .......... Confidentiality Constraint on Patient Data Description
00404005 X .....KC... Scheduled Procedure Step Start DateTime
00404008 X .....KC... Scheduled Procedure Step Expiration DateTime
00404010 X .....KC... Scheduled Procedure Step Modification DateTime
00404011 X .....KC... Expected Completion DateTime
00404023 U .K........ Referenced General Purpose Scheduled Procedure Step Transaction UID
00404025 X ..K....... Scheduled Station Name Code Sequence
00404027 X ..K....... Scheduled Station Geographic Location Code Sequence
00404028 X ..K....... Performed Station Name Code Sequence
00404030 X ..K....... Performed Station Geographic Location Code Sequence
00404034 X .......... Scheduled Human Performers Sequence
00404035 X .......... Actual Human Performers Sequence
00404036 X .......... Human Performer's Organization
00404037 X .......... Human Performer's Name
00404050 X .....KC... Performed Procedure Step Start DateTime
00404051 X .....KC... Performed Procedure Step End DateTime
00404052 X .....KC... Procedure Step Cancellation DateTime
0040A023 X .....KC... Findings Group Recording Date (Trial)
0040A024 X .....KC... Findings Group Recording Time (Trial)
0040A027 D .......... Verifying Organization
0040A030 D .....KC... Verification DateTime
0040A032 X/D .....KC... Observation DateTime
0040A033 X .....KC... Observation Start DateTime
0040A034 X .....KC... Effective Start DateTime
0040A035 X .....KC... Effective Stop DateTime
0040A073 D .......... Verifying Observer Sequence
0040A075 D .......... Verifying Observer Name
0040A078 X .......... Author Observer Sequence
0040A07A X .......... Participant Sequence
0040A07C X .......... Custodial Organization Sequence
0040A082 Z .....KC... Participation DateTime
0040A088 Z .......... Verifying Observer Identification Code Sequence
0040A110 X .....KC... Date of Document or Verbal Transaction (Trial)
0040A112 X .....KC... Time of Document Creation or Verbal Transaction (Trial)
0040A120 D .....KC... DateTime
0040A121 D .....KC... Date
0040A122 D .....KC... Time
0040A123 D .......... Person Name
0040A124 U .......... UID
0040A13A D .....KC... Referenced DateTime
0040A171 U .K........ Observation UID
0040A172 U .K........ Referenced Observation UID (Trial)
0040A192 X .....KC... Observation Date (Trial)
0040A193 X .....KC... Observation Time (Trial)
0040A307 X .......... Current Observer (Trial)
0040A352 X .......... Verbal Source (Trial)
0040A353 X .......... Address (Trial)
0040A354 X .......... Telephone Number (Trial)
0040A358 X .......... Verbal Source Identifier Code Sequence (Trial)
0040A402 U .K........ Observation Subject UID (Trial)
0040A730 D ........C. Content Sequence
0040B020 X/D .......... Waveform Annotation Sequence
0040B034 X .....KC... Annotation DateTime
0040B036 X .....KC... Segment Definition DateTime
0040B03B X .......C.. Montage Name
0040B03F X .......C.. Montage Channel Label
0040DB06 X .....KC... Template Version
0040DB07 X .....KC... Template Local Version
0040DB0C U .K........ Template Extension Organization UID
0040DB0D U .K........ Template Extension Creator UID
0040E004 X .....KC... HL7 Document Effective Time
0040E012 X .......... Display URI
00420011 D .......... Encapsulated Document
00440004 X .....KC... Approval Status DateTime
0044000B X .....KC... Product Expiration DateTime
00440010 X .....KC... Substance Administration DateTime
00440104 D .....KC... Assertion DateTime
00440105 X .....KC... Assertion Expiration DateTime
0050001B X .......... Container Component ID
00500020 X ..K....... Device Description
00500021 X .......C.. Long Device Description
00620021 U .K........ Tracking UID
00640003 U .K........ Source Frame of Reference UID
00686226 D .....KC... Effective DateTime
00686270 D .....KC... Information Issue DateTime
006A0003 D .K........ Annotation Group UID
006A0005 D .......C.. Annotation Group Label
006A0006 X .......C.. Annotation Group Description
00700001 D .........C Graphic Annotation Sequence
00700006 D .......... Unformatted Text Value
00700082 X .....KC... Presentation Creation Date
00700083 X .....KC... Presentation Creation Time
00700084 Z/D .......... Content Creator's Name
00700086 X .......... Content Creator's Identification Code Sequence
0070031A U .K........ Fiducial UID
00701101 U .K........ Presentation Display Collection UID
00701102 U .K........ Presentation Sequence Collection UID
0072000A D .....KC... Hanging Protocol Creation DateTime
0072005E D ..C....... Selector AE Value
0072005F D ....K..... Selector AS Value
00720061 D .....KC... Selector DA Value
00720063 D .....KC... Selector DT Value
00720065 D .......... Selector OB Value
00720066 D .......C.. Selector LO Value
00720068 D .......C.. Selector LT Value
0072006A D .......... Selector PN Value
0072006B D .....KC... Selector TM Value
0072006C D .......C.. Selector SH Value
0072006D D .......... Selector UN Value
0072006E D .......C.. Selector ST Value
00720070 D .......C.. Selector UT Value
00720071 D .......... Selector UR Value
00741234 X ..C....... Receiving AE
00741236 X ..C....... Requesting AE
00880140 U .K........ Storage Media File-set UID
00880200 X .......... Icon Image Sequence (see Note 11)
00880904 X .......... Topic Title
00880906 X .......... Topic Subject
00880910 X .......... Topic Author
00880912 X .......... Topic Keywords
01000420 X .....KC... SOP Authorization DateTime
04000100 U .......... Digital Signature UID
04000105 D .....KC... Digital Signature DateTime
04000115 D .......... Certificate of Signer
04000310 X .....KC... Certified Timestamp
04000402 X .......... Referenced Digital Signature Sequence
04000403 X .......... Referenced SOP Instance MAC Sequence
04000404 X .......... MAC
04000550 X .......... Modified Attributes Sequence
04000551 X .......... Nonconforming Modified Attributes Sequence
04000552 X .......... Nonconforming Data Element Value
04000561 X .......... Original Attributes Sequence
04000562 D .....KC... Attribute Modification DateTime
04000563 D ..K....... Modifying System
04000564 Z ...K...... Source of Previous Values
04000565 D .......C.. Reason for the Attribute Modification
04000600 X .......... Instance Origin Status
20300020 X .......... Text String
21000040 X .....KC... Creation Date
21000050 X .....KC... Creation Time
21000070 X ..C....... Originator
21000140 D ..C....... Destination AE
22000002 X/Z .......C.. Label Text
22000005 X/Z .......... Barcode Value
30020121 X .......C.. Position Acquisition Template Name
30020123 X .......C.. Position Acquisition Template Description
30060002 D .......C.. Structure Set Label
30060004 X .......C.. Structure Set Name
30060006 X .......C.. Structure Set Description
30060008 Z .....KC... Structure Set Date
30060009 Z .....KC... Structure Set Time
30060024 U .K........ Referenced Frame of Reference UID
30060026 Z .......C.. ROI Name
30060028 X .......C.. ROI Description
3006002D X .....KC... ROI DateTime
3006002E X .....KC... ROI Observation DateTime
30060038 X .......C.. ROI Generation Description
3006004D X .......... ROI Creator Sequence
3006004E X .......... ROI Interpreter Sequence
30060085 X .......C.. ROI Observation Label
30060088 X .......C.. ROI Observation Description
300600A6 Z .......... ROI Interpreter
300600C2 U .K........ Related Frame of Reference UID
30080024 D .....KC... Treatment Control Point Date
30080025 D .....KC... Treatment Control Point Time
30080054 X/D .....KC... First Treatment Date
30080056 X/D .....KC... Most Recent Treatment Date
30080105 X/Z ..K....... Source Serial Number
30080162 D .....KC... Safe Position Exit Date
30080164 D .....KC... Safe Position Exit Time
30080166 D .....KC... Safe Position Return Date
30080168 D .....KC... Safe Position Return Time
30080250 X/D .....KC... Treatment Date
30080251 X/D .....KC... Treatment Time
300A0002 D .......C.. RT Plan Label
300A0003 X .......C.. RT Plan Name
300A0004 X .......C.. RT Plan Description
300A0006 X/D .....KC... RT Plan Date
300A0007 X/D .....KC... RT Plan Time
300A000B X .......C.. Treatment Sites
300A000E X .......C.. Prescription Description
300A0013 U .K........ Dose Reference UID
300A0016 X .......C.. Dose Reference Description
300A0054 U .K........ Table Top Position Alignment UID
300A0072 X .......C.. Fraction Group Description
300A0083 U .K........ Referenced Dose Reference UID
300A00B2 X/Z ..K....... Treatment Machine Name
300A00C3 X .......C.. Beam Description
300A00DD X .......C.. Bolus Description
300A0196 X .......C.. Fixation Device Description
300A01A6 X .......C.. Shielding Device Description
300A01B2 X .......C.. Setup Technique Description
300A0216 X ..K....... Source Manufacturer
300A022C D .....KC... Source Strength Reference Date
300A022E D .....KC... Source Strength Reference Time
300A02EB X .......C.. Compensator Description
300A0608 D .......C.. Treatment Position Group Label
300A0609 U .K........ Treatment Position Group UID
300A0611 Z .......... RT Accessory Holder Slot ID
300A0615 Z .......... RT Accessory Device Slot ID
300A0619 D .......C.. Radiation Dose Identification Label
300A0623 D .......C.. Radiation Dose In-Vivo Measurement Label
300A062A D .......C.. RT Tolerance Set Label
300A0650 U .K........ Patient Setup UID
300A0676 X .......C.. Equipment Frame of Reference Description
300A067C D .......C.. Radiation Generation Mode Label
300A067D Z .......C.. Radiation Generation Mode Description
300A0700 U .K........ Treatment Session UID
300A0734 D .......C.. Treatment Tolerance Violation Description
300A0736 D .....KC... Treatment Tolerance Violation DateTime
300A073A D .....KC... Recorded RT Control Point DateTime
300A0741 D .....KC... Interlock DateTime
300A0742 D .......C.. Interlock Description
300A0760 D .....KC... Override DateTime
300A0783 D .......C.. Interlock Origin Description
300A0785 U .K........ Referenced Treatment Position Group UID
300A078E X .......C.. Patient Treatment Preparation Procedure Parameter Description
300A0792 X .......C.. Patient Treatment Preparation Method Description
300A0794 X .......C.. Patient Setup Photo Description
300A079A X .......C.. Displacement Reference Label
300C0113 X .......C.. Reason for Omission Description
300C0127 D ..K..KC... Beam Hold Transition DateTime
300E0004 Z .....KC... Review Date
300E0005 Z .....KC... Review Time
300E0008 X/Z .......... Reviewer Name
30100006 U .K........ Conceptual Volume UID
3010000B U .K........ Referenced Conceptual Volume UID
3010000F Z .......C.. Conceptual Volume Combination Description
30100013 U .K........ Constituent Conceptual Volume UID
30100015 U .K........ Source Conceptual Volume UID
30100017 Z .......C.. Conceptual Volume Description
3010001B Z .......... Device Alternate Identifier
3010002D D ..K....... Device Label
30100031 U .K........ Referenced Fiducials UID
30100033 D .......C.. User Content Label
30100034 D .......C.. User Content Long Label
30100035 D .......C.. Entity Label
30100036 X .......C.. Entity Name
30100037 X .......C.. Entity Description
30100038 D .......C.. Entity Long Label
3010003B U .K........ RT Treatment Phase UID
30100043 Z ..K....... Manufacturer's Device Identifier
3010004C X/D .....KC... Intended Phase Start Date
3010004D X/D .....KC... Intended Phase End Date
30100054 D .......C.. RT Prescription Label
30100056 X/D .......C.. RT Treatment Approach Label
3010005A Z .......C.. RT Physician Intent Narrative
3010005C Z .......C.. Reason for Superseding
30100061 X .......C.. Prior Treatment Dose Description
3010006E U .K........ Dosimetric Objective UID
3010006F U .K........ Referenced Dosimetric Objective UID
30100077 X/D .......C.. Treatment Site
3010007A Z .......C.. Treatment Technique Notes
3010007B Z .......C.. Prescription Notes
3010007F Z .......C.. Fractionation Notes
30100081 Z .......C.. Prescription Notes Sequence
30100085 X .....KC... Intended Fraction Start Time
40000010 X .......... Arbitrary
40004000 X .......... Text Comments
40080040 X .......... Results ID
40080042 X .......... Results ID Issuer
40080100 X .....KC... Interpretation Recorded Date
40080101 X .....KC... Interpretation Recorded Time
40080102 X .......... Interpretation Recorder
40080108 X .....KC... Interpretation Transcription Date
40080109 X .....KC... Interpretation Transcription Time
4008010A X .......... Interpretation Transcriber
4008010B X .......C.. Interpretation Text
4008010C X .......... Interpretation Author
40080111 X .......... Interpretation Approver Sequence
40080112 X .....KC... Interpretation Approval Date
40080113 X .....KC... Interpretation Approval Time
40080114 X .......... Physician Approving Interpretation
40080115 X .......C.. Interpretation Diagnosis Description
40080118 X .......... Results Distribution List Sequence
40080119 X .......... Distribution Name
4008011A X .......... Distribution Address
40080200 X .......... Interpretation ID
40080202 X .......... Interpretation ID Issuer
40080300 X .......C.. Impressions
40084000 X .......C.. Results Comments
FFFAFFFA X .......... Digital Signatures Sequence
FFFCFFFC X .......... Data Set Trailing Padding
"""

#: Exact tag -> (attribute name, Basic Profile action, option actions; "" = no entry).
TABLE: dict[int, tuple[str, str, tuple[str, ...]]] = {
    int(tag, 16): (name, basic, tuple("" if f == "." else f for f in flags))
    for tag, basic, flags, name in (row.split(" ", 3) for row in _ROWS.splitlines())
}

#: Tags with x's: (mask, value, name, Basic Profile action, option actions);
#: a tag matches when ``tag & mask == value``.
PATTERNS: tuple[tuple[int, int, str, str, tuple[str, ...]], ...] = (
    (0x00010000, 0x00010000, "Private Attributes", "X", ("C", "", "", "", "", "", "", "", "", "")),
    (0xFF000000, 0x50000000, "Curve Data", "X", ("", "", "", "", "", "", "", "", "", "C")),
    (0xFF00FFFF, 0x60003000, "Overlay Data", "X", ("", "", "", "", "", "", "", "", "", "C")),
    (0xFF00FFFF, 0x60004000, "Overlay Comments", "X", ("", "", "", "", "", "", "", "", "", "C")),
)

#: Table E.3.10-1, one row per attribute: ``CREATOR|GGGG|EE|VR|MEANING``.
_SAFE_ROWS = """\
ELSCINT1|00E1|21|DS|DLP
ELSCINT1|00E1|50|DS|Acquisition Duration
ELSCINT1|01E1|26|CS|Phantom Type
ELSCINT1|01F1|01|CS|Acquisition Type
ELSCINT1|01F1|07|DS|Table Velocity
ELSCINT1|01F1|26|DS|Pitch
ELSCINT1|01F1|27|DS|Rotation Time
GEIIS PACS|0903|10|US|Reject Image Flag
GEIIS PACS|0903|11|US|Significant Flag
GEIIS PACS|0903|12|US|Confidential Flag
GEMS_ACQU_01|0019|23|DS|Table Speed [mm/rotation]
GEMS_ACQU_01|0019|24|DS|Mid Scan Time [sec]
GEMS_ACQU_01|0019|27|DS|Rotation Speed (Gantry Period)
GEMS_ACQU_01|0019|9E|LO|Internal Pulse Sequence Name
GEMS_HELIOS_01|0045|01|SS|Number of Macro Rows in Detector
GEMS_HELIOS_01|0045|02|FL|Macro width at ISO Center
GEMS_PARM_01|0043|27|SH|Scan Pitch Ratio in the form "n.nnn:1"
GEMS_PARM_01|0043|39|IS|1st value is B Value
GEMS_PARM_01|0043|6F|DS|Scanner Table Entry + Gradient Coil Selected
GEMS_SERS_01|0025|07|SL|Images in Series
HOLOGIC, Inc.|7E01|01|LO|Codec Version
HOLOGIC, Inc.|7E01|02|SH|Codec Content Type
HOLOGIC, Inc.|7E01|10|SQ|High Resolution Data Sequence
HOLOGIC, Inc.|7E01|11|SQ|Low Resolution Data Sequence
HOLOGIC, Inc.|7E01|12|OB|Codec Content
NQHeader|0099|01|UI|Version
NQHeader|0099|02|UI|Analyzed Series UID
NQHeader|0099|04|SS|Return Code
NQHeader|0099|05|LT|Return Message
NQHeader|0099|10|FL|MI
NQHeader|0099|20|SH|Units
NQHeader|0099|21|FL|ICV
NQLeft|0199|01|FL|Left Cortical White Matter
NQLeft|0199|02|FL|Left Cortical Gray Matter
NQLeft|0199|03|FL|Left 3rd Ventricle
NQLeft|0199|04|FL|Left 4th Ventricle
NQLeft|0199|05|FL|Left 5th Ventricle
NQLeft|0199|06|FL|Left Lateral Ventricle
NQLeft|0199|07|FL|Left Inferior Lateral Ventricle
NQLeft|0199|08|FL|Left Inferior CSF
NQLeft|0199|09|FL|Left Cerebellar White Matter
NQLeft|0199|0A|FL|Left Cerebellar Gray Matter
NQLeft|0199|0B|FL|Left Hippocampus
NQLeft|0199|0C|FL|Left Amygdala
NQLeft|0199|0D|FL|Left Thalamus
NQLeft|0199|0E|FL|Left Caudate
NQLeft|0199|0F|FL|Left Putamen
NQLeft|0199|10|FL|Left Pallidum
NQLeft|0199|11|FL|Left Ventral Diencephalon
NQLeft|0199|12|FL|Left Nucleus Accumbens
NQLeft|0199|13|FL|Left Brain Stem
NQLeft|0199|14|FL|Left Exterior CSF
NQLeft|0199|15|FL|Left WM Hypo
NQLeft|0199|16|FL|Left Other
NQRight|0299|01|FL|Right Cortical White Matter
NQRight|0299|02|FL|Right Cortical Gray Matter
NQRight|0299|03|FL|Right 3rd Ventricle
NQRight|0299|04|FL|Right 4th Ventricle
NQRight|0299|05|FL|Right 5th Ventricle
NQRight|0299|06|FL|Right Lateral Ventricle
NQRight|0299|07|FL|Right Inferior Lateral Ventricle
NQRight|0299|08|FL|Right Inferior CSF
NQRight|0299|09|FL|Right Cerebellar White Matter
NQRight|0299|0A|FL|Right Cerebellar Gray Matter
NQRight|0299|0B|FL|Right Hippocampus
NQRight|0299|0C|FL|Right Amygdala
NQRight|0299|0D|FL|Right Thalamus
NQRight|0299|0E|FL|Right Caudate
NQRight|0299|0F|FL|Right Putamen
NQRight|0299|10|FL|Right Pallidum
NQRight|0299|11|FL|Right Ventral Diencephalon
NQRight|0299|12|FL|Right Nucleus Accumbens
NQRight|0299|13|FL|Right Brain Stem
NQRight|0299|14|FL|Right Exterior CSF
NQRight|0299|15|FL|Right WM Hypo
NQRight|0299|16|FL|Right Other
Philips Imaging DD 001|2001|03|FL|Diffusion B-Factor
Philips Imaging DD 001|2001|04|CS|Diffusion Direction
Philips MR Imaging DD 001|2005|0D|FL|Scale Intercept
Philips MR Imaging DD 001|2005|0E|FL|Scale Slope
Philips PET Private Group|7053|00|DS|SUV Factor - Multiplying stored pixel values by Rescale Slope then this factor results in SUVbw in g/l
Philips PET Private Group|7053|09|DS|Activity Concentration Factor - Multiplying stored pixel values by Rescale Slope then this factor results in MBq/ml.
SIEMENS MR HEADER|0019|0C|IS|B Value
SIEMENS MR HEADER|0019|0D|CS|Diffusion Directionality
SIEMENS MR HEADER|0019|0E|FD|Diffusion Gradient Direction
SIEMENS MR HEADER|0019|27|FD|B Matrix
SIEMENS SYNGO ULTRA-SOUND TOYON DATA STREAMING|7FD1|01|OB|Padding
SIEMENS SYNGO ULTRA-SOUND TOYON DATA STREAMING|7FD1|09|UI|Version ID
SIEMENS SYNGO ULTRA-SOUND TOYON DATA STREAMING|7FD1|10|OB|Volume Payload
SIEMENS SYNGO ULTRA-SOUND TOYON DATA STREAMING|7FD1|11|OB|After Payload
SIEMENS Ultrasound SC2000|0119|00|LO|Acoustic Meta Information Version
SIEMENS Ultrasound SC2000|0119|01|OB|Common Acoustic Meta Information
SIEMENS Ultrasound SC2000|0119|02|SQ|Multi Stream Sequence
SIEMENS Ultrasound SC2000|0119|03|SQ|Acoustic Data Sequence
SIEMENS Ultrasound SC2000|0119|04|OB|Per Transaction Acoustic Control Information
SIEMENS Ultrasound SC2000|0119|05|UL|Acoustic Data Offset
SIEMENS Ultrasound SC2000|0119|06|UL|Acoustic Data Length
SIEMENS Ultrasound SC2000|0119|07|UL|Footer Offset
SIEMENS Ultrasound SC2000|0119|08|UL|Footer Length
SIEMENS Ultrasound SC2000|0119|09|SS|Acoustic Stream Number
SIEMENS Ultrasound SC2000|0119|10|SH|Acoustic Stream Type
SIEMENS Ultrasound SC2000|0119|11||Stage Timer Time
SIEMENS Ultrasound SC2000|0119|12||Stop Watch Time
SIEMENS Ultrasound SC2000|0119|13|IS|Volume Rate
SIEMENS Ultrasound SC2000|0119|21|SH|
SIEMENS Ultrasound SC2000|0129|00|SQ|MPR View Sequence
SIEMENS Ultrasound SC2000|0129|02|UI|Bookmark UID
SIEMENS Ultrasound SC2000|0129|03||Plane Origin Vector
SIEMENS Ultrasound SC2000|0129|04||Row Vector
SIEMENS Ultrasound SC2000|0129|05||Column Vector
SIEMENS Ultrasound SC2000|0129|06|SQ|Visualization Sequence
SIEMENS Ultrasound SC2000|0129|07|UI|Bookmark UID
SIEMENS Ultrasound SC2000|0129|08|OB|Visualization Information
SIEMENS Ultrasound SC2000|0129|09|SQ|Application State Sequence
SIEMENS Ultrasound SC2000|0129|10|OB|Application State Information
SIEMENS Ultrasound SC2000|0129|11|SQ|Referenced Bookmark Sequence
SIEMENS Ultrasound SC2000|0129|12|UI|Referenced Bookmark UID
SIEMENS Ultrasound SC2000|0129|20|SQ|Cine Parameters Sequence
SIEMENS Ultrasound SC2000|0129|21|OB|Cine Parameters Schema
SIEMENS Ultrasound SC2000|0129|22|OB|Values of Cine Parameters
SIEMENS Ultrasound SC2000|0129|29|OB|
SIEMENS Ultrasound SC2000|0129|30|CS|Raw Data Object Type
SIEMENS Ultrasound SC2000|0139|01|SL|Physio Capture ROI
SIEMENS Ultrasound SC2000|0149|01|FD|Vector of BROI Points
SIEMENS Ultrasound SC2000|0149|02|FD|Start/End Timestamps of Strip Stream
SIEMENS Ultrasound SC2000|0149|03|FD|Timestamps of Visible R-waves
SIEMENS Ultrasound SC2000|7FD1|01|OB|Acoustic Image and Footer Data
SIEMENS Ultrasound SC2000|7FD1|09|UI|Volume Version ID
SIEMENS Ultrasound SC2000|7FD1|10|OB|Volume Payload
SIEMENS Ultrasound SC2000|7FD1|11|OB|After Payload
"""

#: Table E.3.10-1: (private creator, group, element byte in the block) -> (VR, meaning).
SAFE_PRIVATE: dict[tuple[str, int, int], tuple[str, str]] = {
    (creator, int(group, 16), int(element, 16)): (vr, meaning)
    for creator, group, element, vr, meaning in (row.split("|") for row in _SAFE_ROWS.splitlines())
}
